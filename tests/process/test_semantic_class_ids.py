"""Semantic results with class ids outside the class info: one line ``error: ...``, exit 2,
whichever image meets it and however many worker processes run (the class info is wrong for
the whole set, so the run stops instead of skipping images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import models
import process
from inference.folder import run_folder
from misc.io import write_image
from tests.inference.toy_family import ToySemanticFamily, nuclei_image, toy_semantic_family

#: The toy's classes on nuclei_image: 0 (light background) and 2 (dark and red discs).
WITHOUT_CLASS_2 = {"0": ["background", [255, 255, 255]], "1": ["tissue", [230, 150, 200]]}


@pytest.fixture
def raw_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Raw files of the semantic toy: with its full class info, and with one lacking class 2."""
    monkeypatch.setitem(models.FAMILIES, ToySemanticFamily.name, ToySemanticFamily)
    images = tmp_path / "images"
    for k in range(2):
        write_image(images / f"tile{k}.png", nuclei_image((48, 40), seed=k))
    dirs = {}
    for name, class_info in (("full", None), ("short", WITHOUT_CLASS_2)):
        family, net = toy_semantic_family()
        if class_info is not None:
            family.cfg["postproc"] = {"class_info": class_info}
        run_folder(family, net, images, tmp_path / name, "cpu", show_progress=False)
        dirs[name] = tmp_path / name
    return dirs


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as stop:
        process.main([*argv, "--quiet"])
    return stop.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_type_info_without_a_class_of_the_map(raw_dirs: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                                              workers: str) -> None:
    info = tmp_path / "classes.json"
    info.write_text(json.dumps(WITHOUT_CLASS_2))
    out = tmp_path / "out"
    code, lines = _run(["--input", str(raw_dirs["full"]), "--output", str(out), "--type-info", str(info),
                        "--workers", workers], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and ".npz (class map): class ids [2] are not in the --type-info file" \
        in lines[0] and "expected a class map with those ids" in lines[0]
    assert not (out / "areas.csv").exists()


def test_config_class_info_without_a_class_of_the_map(raw_dirs: dict, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    code, lines = _run(["--input", str(raw_dirs["short"]), "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "class ids [2] are not in postproc.class_info (it has ids [0, 1])" in lines[0]


def test_full_class_info_writes_every_image(raw_dirs: dict, tmp_path: Path) -> None:
    assert process.main(["--input", str(raw_dirs["full"]), "--output", str(tmp_path / "out"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "label").iterdir()) == ["tile0.png", "tile1.png"]
