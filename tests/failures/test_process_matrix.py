"""The failure matrix of ``process.py`` over every registered family, on the raw files
``infer.py`` wrote for it: a truncated raw file and NaN in a raw map are skipped and reported
(exit 1) while the others are processed; an empty prediction gives empty results; a missing or
empty input is one ``error:`` line; ground truth (``--gt``) with a label map of another shape is
one ``error:`` line naming it, and non-contiguous instance ids or a map without background
are scored like any other map. Files already in the output folder stay as they were."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import process
from misc.io import read_label, write_label
from tests.failures.conftest import BUILT_IN, IMAGE_FAMILIES, SIDE, Outcome, run_main, task_of, tiles, truncated_copy

#: Raw files that process.py must skip and report, by case.
SKIPPED = {"truncated raw file": "cut", "NaN in a raw map": "nan"}
EARLIER = "notes.txt"


@dataclass(frozen=True)
class ProcessRun:
    """``process.py`` over a family's mixed raw folder: the outcome and the output folder."""

    outcome: Outcome
    out: Path
    task: str


def raw_folder(source: Path, folder: Path) -> Path:
    """``good.npz`` (copied from ``source``), ``cut.npz`` (its first half), ``nan.npz`` (one
    NaN in its first map) and ``empty.npz`` (every map 0: nothing predicted)."""
    folder.mkdir(parents=True)
    shutil.copy(source, folder / "good.npz")
    truncated_copy(source, folder / "cut.npz")
    with np.load(source) as raw:
        arrays = {key: raw[key] for key in raw.files}
    maps = [key for key, value in arrays.items() if value.dtype.kind == "f"]
    first = arrays[maps[0]].copy()
    first.reshape(-1)[first.size // 2] = np.nan
    np.savez(folder / "nan.npz", **{**arrays, maps[0]: first})
    np.savez(folder / "empty.npz", **{**arrays, **{key: np.zeros_like(arrays[key]) for key in maps}})
    return folder


def run_process(raw: Path, root: Path, family: str) -> ProcessRun:
    """``process.py`` over ``raw`` into ``root/out``, made to hold an earlier file first."""
    (root / "out").mkdir()
    (root / "out" / EARLIER).write_text("kept")
    outcome = run_main(process.main, ["--input", raw, "--output", root / "out", "--quiet"])
    return ProcessRun(outcome, root / "out", task_of(family, "infer"))


@pytest.fixture(scope="module")
def process_runs(infer_runs, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], ProcessRun]:
    """Family -> its :class:`ProcessRun` (run once, on first use)."""
    done: dict[str, ProcessRun] = {}

    def get(family: str) -> ProcessRun:
        if family not in done:
            root = tmp_path_factory.mktemp(f"process-{family}")
            done[family] = run_process(raw_folder(infer_runs(family).raw / "good.npz", root / "raw"), root, family)
        return done[family]

    return get


def per_image_files(out: Path) -> dict[str, list[str]]:
    """Image stem -> the per-image files written for it (relative paths)."""
    files: dict[str, list[str]] = {}
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.parent != out:
            files.setdefault(path.stem, []).append(str(path.relative_to(out)))
    return files


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
@pytest.mark.parametrize("case", list(SKIPPED))
def test_bad_raw_file_is_skipped_and_reported(family: str, case: str, process_runs) -> None:
    check_skipped(process_runs(family), case)


def check_skipped(run: ProcessRun, case: str) -> None:
    """``run`` skipped and reported the raw file of ``case`` (exit 1, one line per bad file, no
    traceback), processed ``good``, left no half-written file and kept the earlier file."""
    name = f"{SKIPPED[case]}.npz"
    assert run.outcome.code == 1, run.outcome.text
    assert "Traceback" not in run.outcome.text
    assert any(line.startswith("ERROR not processed") and name in line for line in run.outcome.lines), run.outcome.text
    assert all(any(f"{bad}.npz" in line for bad in SKIPPED.values()) for line in run.outcome.lines), run.outcome.text
    written = per_image_files(run.out)
    assert SKIPPED[case] not in written and written["good"]
    assert not [p for p in run.out.rglob(".*")]  # no half-written file
    assert (run.out / EARLIER).read_text() == "kept"


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_empty_prediction_gives_empty_results(family: str, process_runs) -> None:
    run = process_runs(family)
    written = per_image_files(run.out)
    assert [Path(p).parent for p in written["empty"]] == [Path(p).parent for p in written["good"]]
    if run.task == "instance":
        assert json.loads((run.out / "json" / "empty.json").read_text())["nuc"] == {}
        assert json.loads((run.out / "geojson" / "empty.geojson").read_text())["features"] == []
    elif run.task == "semantic":
        labels = read_label(run.out / "label" / "empty.png")
        assert len(np.unique(labels)) == 1


@pytest.mark.parametrize("family", BUILT_IN)
@pytest.mark.parametrize("case", ["missing input", "empty folder"])
def test_missing_or_empty_input_is_one_error_line(family: str, case: str, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    if case == "empty folder":
        raw.mkdir()
    line = run_main(process.main, ["--input", raw, "--output", tmp_path / "out", "--quiet"]).one_error()
    assert str(raw) in line


def _families(*tasks: str) -> list[str]:
    """The built-in families whose inference task is one of ``tasks``."""
    return [family for family in IMAGE_FAMILIES if task_of(family, "infer") in tasks]


def _ground_truth(root: Path, good: np.ndarray, task: str) -> tuple[Path, str, Path]:
    """A one-image truth named ``good`` in the layout ``--gt`` takes for ``task``: a ``folder``
    dataset (instance; its label map ``inst/good.npy``) or a folder of class-map images
    (semantic; ``good.png``). Returns the folder, the ``--gt`` value and the label file."""
    if task == "instance":
        tiles(root)
        (root / "images" / "tile_0000.png").rename(root / "images" / "good.png")
        shutil.rmtree(root / "types")  # untyped truth: instances only
        (root / "inst" / "tile_0000.npy").unlink()
        write_label(root / "inst" / "good.npy", good)
        return root, f"folder:{root}", root / "inst" / "good.npy"
    root.mkdir(parents=True)
    write_label(root / "good.png", good)
    return root, str(root), root / "good.png"


def _score(family: str, infer_runs, tmp: Path, truth: np.ndarray) -> tuple[Outcome, Path, Path]:
    """process.py --gt on the family's ``good.npz`` against ``truth`` (the label file at fault
    is returned too)."""
    raw = tmp / "raw"
    raw.mkdir(parents=True)
    shutil.copy(infer_runs(family).raw / "good.npz", raw / "good.npz")
    _, gt, label = _ground_truth(tmp / "gt", truth, task_of(family, "infer"))
    outcome = run_main(process.main, ["--input", raw, "--output", tmp / "out", "--gt", gt, "--quiet"])
    return outcome, tmp / "out", label


def _blobs(shape: tuple[int, int], ids: tuple[int, ...]) -> np.ndarray:
    """(H, W) int32 label map of square blobs labelled ``ids`` on background 0."""
    labels = np.zeros(shape, np.int32)
    for k, value in enumerate(ids):
        top, left = 4 + 14 * (k // 3), 4 + 14 * (k % 3)
        labels[top:top + 10, left:left + 10] = value
    return labels


@pytest.mark.parametrize("family", _families("instance", "semantic"))
def test_ground_truth_of_another_shape_is_one_error_line(family: str, infer_runs, tmp_path: Path) -> None:
    outcome, _, label = _score(family, infer_runs, tmp_path, _blobs((SIDE - 5, SIDE), (1, 2)))
    assert str(label) in outcome.one_error()


@pytest.mark.parametrize("family", _families("instance"))
def test_non_contiguous_instance_ids_score_as_contiguous(family: str, infer_runs, tmp_path: Path) -> None:
    scores = []
    for case, ids in (("contiguous", (1, 2, 3, 4)), ("sparse", (7, 300, 12, 65000))):
        outcome, out, _ = _score(family, infer_runs, tmp_path / case, _blobs((SIDE, SIDE), ids))
        assert outcome.code == 0 and "Traceback" not in outcome.text, outcome.text
        scores.append(json.loads((out / "metrics.json").read_text())["per_image"])
    assert scores[0] == scores[1]


@pytest.mark.parametrize("family", _families("instance", "semantic"))
def test_map_without_background_is_scored(family: str, infer_runs, process_runs, tmp_path: Path) -> None:
    truth = np.repeat(np.arange(1, 5, dtype=np.int32), SIDE * SIDE // 4).reshape(SIDE, SIDE)
    if task_of(family, "infer") == "semantic":  # one class everywhere, at the class map's resolution
        truth = np.ones(read_label(process_runs(family).out / "label" / "good.png").shape, np.int32)
    outcome, out, _ = _score(family, infer_runs, tmp_path, truth)
    assert outcome.code == 0 and "Traceback" not in outcome.text, outcome.text
    scores = json.loads((out / "metrics.json").read_text())
    rows = scores.get("per_image") or scores["images"]  # instance / semantic tables (NaN is written null)
    values = [v for row in rows for key, v in row.items() if key != "name" and v is not None]
    assert values and all(0.0 <= v <= 1.0 for v in values)
