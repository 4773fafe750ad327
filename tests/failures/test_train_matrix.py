"""The failure matrix of ``train.py`` over every registered family: an unknown config key or a
value of the wrong type (``--set`` or ``--config``), a ``--resume`` checkpoint of another family
or cut short, and bad training data each give one ``error:`` line naming the key or file
(exit 2); the run folder keeps what it held."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import train
from config import stage_names
from misc.io import read_image, write_label
from tests.failures.conftest import BUILT_IN, SIDE, demo_config, png_bytes, run_main, task_of, tiles, truncated_copy

HEAD = ["--profile", "demo", "--device", "cpu", "--num-threads", "1", "--quiet"]


@pytest.mark.parametrize("family", BUILT_IN)
@pytest.mark.parametrize(("case", "where"), [("unknown key", "--set"), ("unknown key", "--config"),
                                             ("wrong value type", "--set"), ("wrong value type", "--config")])
def test_bad_config_is_one_error_line_naming_the_key(family: str, case: str, where: str, tmp_path: Path) -> None:
    key, value = ("train.no_such_key", "1") if case == "unknown key" else ("train.seed", "abc")
    section, name = key.split(".")
    if where == "--set":
        extra = ["--set", f"{key}={value}"]
    else:
        (tmp_path / "bad.yaml").write_text(f"{section}:\n  {name}: {value}\n")
        extra = ["--config", tmp_path / "bad.yaml"]
    line = run_main(train.main, ["--model", family, *HEAD, *extra, "--out", tmp_path / "run"]).one_error()
    assert f"'{key}'" in line and (where == "--set" or str(tmp_path / "bad.yaml") in line)
    assert not (tmp_path / "run").exists()


def _latest(family: str, run: Path) -> Path:
    """Where ``--out RUN --resume`` looks first: ``checkpoints/latest.pt``, or the first stage's."""
    names = stage_names(demo_config(family))
    return run / ("stages/" + names[0] if names else "") / "checkpoints" / "latest.pt"


@pytest.mark.parametrize("family", BUILT_IN)
@pytest.mark.parametrize("case", ["checkpoint of another family", "truncated checkpoint"])
def test_bad_resume_checkpoint_is_one_error_line(family: str, case: str, checkpoints, tmp_path: Path) -> None:
    latest = _latest(family, tmp_path / "run")
    latest.parent.mkdir(parents=True)
    if case == "truncated checkpoint":
        truncated_copy(checkpoints[family], latest)
    else:
        other = next(name for name in BUILT_IN if name != family)
        shutil.copy(checkpoints[other], latest)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    line = run_main(train.main, ["--model", family, *HEAD, "--out", tmp_path / "run", "--resume"]).one_error()
    assert str(latest) in line
    if case == "checkpoint of another family":
        assert f"--model is '{family}'" in line
    assert {p: p.read_bytes() for p in before} == before


def _trains_on_image_datasets(family: str) -> bool:
    """Families whose training reads image datasets (instance maps, or patch labels from type
    maps); slide-level semantic training reads cohorts instead."""
    return task_of(family, "train") in ("instance", "patch")


@pytest.mark.parametrize("family", [f for f in BUILT_IN if _trains_on_image_datasets(f)])
@pytest.mark.parametrize("case", ["corrupt image", "truncated image", "label of another shape", "missing folder",
                                  "empty folder"])
def test_bad_training_data_is_one_error_line(family: str, case: str, tmp_path: Path) -> None:
    root = tmp_path / "data"
    if case != "missing folder":
        tiles(root, n=3)
    image, label = root / "images" / "tile_0001.png", root / "inst" / "tile_0001.npy"
    culprit = {"missing folder": root, "label of another shape": label}.get(case, image)
    if case == "corrupt image":
        image.write_bytes(b"not an image")
    elif case == "truncated image":
        image.write_bytes(png_bytes(read_image(image))[:300])
    elif case == "label of another shape":
        write_label(label, np.zeros((SIDE, SIDE - 7), np.int32))
    elif case == "empty folder":
        for folder in root.iterdir():
            shutil.rmtree(folder)
            folder.mkdir()
        culprit = root
    line = run_main(train.main, ["--model", family, *HEAD, "--data", f"folder:{root}", "--out", tmp_path / "run"]).one_error()
    assert str(culprit) in line
    assert not (tmp_path / "run" / "checkpoints").exists()
