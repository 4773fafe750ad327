"""The failure matrix of ``process.py`` on whole-slide results of the families that infer slides
only (``Family.slides_only``): the raw file ``OUT/<stem>/<stem>.npz`` that ``infer.py --input
SLIDE`` writes into each slide's folder, and ``--gt`` given as the synthetic cohort's
``cohort.json``. A truncated raw file and NaN in a raw map are skipped and reported (exit 1)
while the other slides are processed; an empty prediction gives empty results; slide folders
without a raw file are one ``error:`` line; a slide that ``--gt`` does not list is processed,
listed and left out of the scores (as an image without ground truth is), a ground truth matching
no slide or one of another size is one ``error:`` line naming it. Files already in the output
folder stay as they were.

One synthetic slide is inferred once per module with the family's untrained checkpoint; the
broken copies are derived from its raw file."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import infer
import process
from loader.synthetic_tumour import mask_geojson, write_cohort
from misc.io import read_image, read_label, write_image
from tests.failures.conftest import SLIDES_ONLY, Outcome, run_main
from tests.failures.test_process_matrix import EARLIER, SKIPPED, ProcessRun, check_skipped, per_image_files, raw_folder, run_process

#: Side of the synthetic slide (level-0 pixels at 1 µm/px): a few detection patches of the demo profile.
SLIDE_SIDE = 1024


@dataclass(frozen=True)
class SlideResult:
    """``infer.py`` on one slide of a cohort: its output folder, the slide's name (its folder
    ``raw/<name>/`` holds ``<name>.npz``) and the ``cohort.json`` listing it."""

    raw: Path
    name: str
    cohort: Path

    @property
    def raw_file(self) -> Path:
        return self.raw / self.name / f"{self.name}.npz"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``cohort.json`` of a synthetic cohort of one SLIDE_SIDE² test slide (``loader.synthetic_tumour``)."""
    folder = tmp_path_factory.mktemp("cohort")
    write_cohort(folder, {"test": 1}, (SLIDE_SIDE, SLIDE_SIDE), seed=0, mpp=1.0)
    return folder / "cohort.json"


@pytest.fixture(scope="module")
def slide_results(checkpoints: dict[str, Path], cohort: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], SlideResult]:
    """Family -> its :class:`SlideResult` on the cohort's slide (inferred once, on first use)."""
    done: dict[str, SlideResult] = {}

    def get(family: str) -> SlideResult:
        if family not in done:
            raw = tmp_path_factory.mktemp(f"slide-{family}") / "raw"
            outcome = run_main(infer.main, ["--model-path", checkpoints[family], "--input", cohort.parent / "slides",
                                            "--output", raw, "--device", "cpu", "--quiet"])
            assert outcome.code == 0, outcome.text
            (name,) = [entry["name"] for entry in json.loads(cohort.read_text())["slides"]]
            done[family] = SlideResult(raw, name, cohort)
        return done[family]

    return get


def slide_folders(source: Path, folder: Path) -> Path:
    """:func:`raw_folder` of ``source`` (``good``, ``cut``, ``nan``, ``empty``) laid out as
    ``infer.py`` writes slides: each raw file ``NAME.npz`` in its slide folder ``NAME/``."""
    raw_folder(source, folder)
    for path in sorted(folder.glob("*.npz")):
        (folder / path.stem).mkdir()
        path.rename(folder / path.stem / path.name)
    return folder


@pytest.fixture(scope="module")
def slide_process_runs(slide_results: Callable[[str], SlideResult],
                       tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], ProcessRun]:
    """Family -> ``process.py`` over :func:`slide_folders` of its slide (run once, on first use)
    into an output folder holding an earlier file."""
    done: dict[str, ProcessRun] = {}

    def get(family: str) -> ProcessRun:
        if family not in done:
            root = tmp_path_factory.mktemp(f"process-slides-{family}")
            done[family] = run_process(slide_folders(slide_results(family).raw_file, root / "raw"), root, family)
        return done[family]

    return get


@pytest.mark.parametrize("family", SLIDES_ONLY)
@pytest.mark.parametrize("case", list(SKIPPED))
def test_bad_slide_raw_file_is_skipped_and_reported(family: str, case: str, slide_process_runs) -> None:
    check_skipped(slide_process_runs(family), case)


def _areas(out: Path) -> dict[tuple[str, str], int]:
    """``(image, class) -> pixels`` of ``out/areas.csv``."""
    with open(out / "areas.csv", newline="") as handle:
        return {(row["image"], row["class"]): int(row["pixels"]) for row in csv.DictReader(handle)}


@pytest.mark.parametrize("family", SLIDES_ONLY)
def test_empty_slide_prediction_gives_empty_results(family: str, slide_process_runs) -> None:
    run = slide_process_runs(family)
    written = per_image_files(run.out)
    assert [Path(p).parent for p in written["empty"]] == [Path(p).parent for p in written["good"]]
    labels = read_label(run.out / "label" / "empty.png")
    assert labels.shape == read_label(run.out / "label" / "good.png").shape and not labels.any()
    features = json.loads((run.out / "geojson" / "empty.geojson").read_text())["features"]
    assert [feature["id"] for feature in features] == ["0"]  # the background (class 0) only
    areas = {name: pixels for (image, name), pixels in _areas(run.out).items() if image == "empty"}
    assert areas.pop("background") == labels.size and areas and not any(areas.values())


@pytest.mark.parametrize("family", SLIDES_ONLY)
def test_slide_folders_without_a_raw_file_are_one_error_line(family: str, slide_results, tmp_path: Path) -> None:
    result = slide_results(family)
    raw = tmp_path / "raw"
    shutil.copytree(result.raw / result.name, raw / result.name, ignore=shutil.ignore_patterns("*.npz"))
    line = run_main(process.main, ["--input", raw, "--output", tmp_path / "out", "--quiet"]).one_error()
    assert str(raw) in line


def _score(result: SlideResult, tmp: Path, gt: Path, *others: str) -> tuple[Outcome, Path]:
    """``process.py --gt gt`` on the slide's folder and copies of it named ``others``, into an
    output folder holding an earlier file."""
    raw = tmp / "raw"
    shutil.copytree(result.raw / result.name, raw / result.name)
    for name in others:
        (raw / name).mkdir()
        shutil.copy(result.raw_file, raw / name / f"{name}.npz")
    (tmp / "out").mkdir()
    (tmp / "out" / EARLIER).write_text("kept")
    return run_main(process.main, ["--input", raw, "--output", tmp / "out", "--gt", gt, "--quiet"]), tmp / "out"


def _cohort_copy(cohort: Path, folder: Path, **changes: str) -> Path:
    """``folder/cohort.json``: ``cohort``'s record with absolute paths and ``changes`` in every slide's entry."""
    record = json.loads(cohort.read_text())
    for entry in record["slides"]:
        entry.update({key: str(cohort.parent / entry[key]) for key in ("slide", "mask", "annotation")}, **changes)
    folder.mkdir(parents=True)
    (folder / "cohort.json").write_text(json.dumps(record))
    return folder / "cohort.json"


@pytest.mark.parametrize("family", SLIDES_ONLY)
def test_slide_missing_from_ground_truth_is_listed_and_left_out(family: str, slide_results, tmp_path: Path) -> None:
    result = slide_results(family)
    outcome, out = _score(result, tmp_path, result.cohort, "unlisted")
    assert outcome.code == 0 and "Traceback" not in outcome.text, outcome.text
    assert len(outcome.lines) == 1 and outcome.lines[0].startswith("WARNING") and "unlisted" in outcome.lines[0]
    scores = json.loads((out / "metrics.json").read_text())
    assert [row["name"] for row in scores["per_image"]] == [result.name]
    assert scores["options"]["unpaired"] == ["unlisted"]
    values = [value for key, value in scores["per_image"][0].items() if key != "name" and value is not None]
    assert values and all(0.0 <= value <= 1.0 for value in values)
    assert (out / "label" / "unlisted.png").is_file()  # processed, only not scored
    assert (out / EARLIER).read_text() == "kept"


@pytest.mark.parametrize("family", SLIDES_ONLY)
def test_ground_truth_without_the_slide_is_one_error_line(family: str, slide_results, tmp_path: Path) -> None:
    result = slide_results(family)
    gt = _cohort_copy(result.cohort, tmp_path / "gt", name="another")
    outcome, out = _score(result, tmp_path, gt)
    line = outcome.one_error()
    assert str(gt) in line and f"'{result.name}'" in line
    assert not (out / "metrics.csv").exists() and (out / EARLIER).read_text() == "kept"


@pytest.mark.parametrize("family", SLIDES_ONLY)
@pytest.mark.parametrize("case", ["annotation of a larger slide", "mask of another aspect ratio"])
def test_ground_truth_of_another_size_is_one_error_line(family: str, case: str, slide_results, tmp_path: Path) -> None:
    result = slide_results(family)
    if case == "annotation of a larger slide":  # tumour over a slide twice the side
        culprit = tmp_path / "larger.geojson"
        culprit.write_text(json.dumps(mask_geojson(np.ones((2, 2), bool), SLIDE_SIDE)))
        gt = _cohort_copy(result.cohort, tmp_path / "gt", annotation=str(culprit))
    else:  # a folder of per-slide masks, the slide's cut to half its width
        mask = read_image(result.cohort.parent / "masks" / f"{result.name}.png")
        gt = tmp_path / "masks"
        culprit = gt / f"{result.name}.png"
        write_image(culprit, np.ascontiguousarray(mask[:, : mask.shape[1] // 2]))
    outcome, out = _score(result, tmp_path, gt)
    assert str(culprit) in outcome.one_error()
    assert not (out / "metrics.csv").exists() and (out / EARLIER).read_text() == "kept"
    assert not [p for p in out.rglob(".*")]  # no half-written file
