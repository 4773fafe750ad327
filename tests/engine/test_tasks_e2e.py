"""The patch and staged semantic toy families end to end through train.py, infer.py and
process.py: task outputs, scores, stages, per-stage resume and the one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from misc.io import write_image, write_label
from tests.engine.helpers import PLUGIN, REPO_ROOT, run_train, subprocess_env

PATCH_CLASSES = ["epithelial", "inflammatory", "spindle"]


def run_script(script: str, *args: str | Path) -> subprocess.CompletedProcess:
    """``python <script> ARGS`` with the toy families registered (``$HISTOSEG_PLUGINS``)."""
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *map(str, args)], cwd=REPO_ROOT,
                          env=subprocess_env(HISTOSEG_PLUGINS=PLUGIN), capture_output=True, text=True, timeout=180)


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def one_error(done: subprocess.CompletedProcess) -> str:
    """The single ``error: ...`` line of a run that exited 2."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and sum(line.startswith("error:") for line in lines) == 1
    return next(line for line in lines if line.startswith("error:"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """Three synthetic 40x48 images and their instance and type maps."""
    from loader.synthetic import generate_tile, tile_seed

    folder = tmp_path_factory.mktemp("images")
    truths = {}
    for index in range(3):
        image, inst_map, type_map = generate_tile(tile_seed(7, index), (40, 48))
        write_image(folder / f"tile{index}.png", image)
        truths[f"tile{index}"] = (inst_map, type_map)
    return folder, truths


# --- patch ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def patch_run(tmp_path_factory, images) -> Path:
    """toy_patchcls trained, inferred and processed: the work folder."""
    work = tmp_path_factory.mktemp("patch")
    ok(run_train("--model", "toy_patchcls", "--data", "synthetic", "--out", work / "run"))
    ok(run_script("infer.py", "--model-path", work / "run/checkpoints/latest.pt", "--input", images[0],
                  "--output", work / "raw", "--device", "cpu", "--quiet"))
    with open(work / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", *PATCH_CLASSES])
        for name, (_, type_map) in images[1].items():
            writer.writerow([name, *[int(np.any(type_map == t)) for t in (1, 2, 3)]])
    ok(run_script("process.py", "--input", work / "raw", "--output", work / "out", "--gt", work / "labels.csv", "--quiet"))
    return work


def test_patch_classifier_stores_per_window_vectors_and_its_thresholds(patch_run: Path) -> None:
    checkpoint = torch.load(patch_run / "run/checkpoints/latest.pt", map_location="cpu", weights_only=True)
    thresholds = checkpoint["family_state"]["thresholds"]
    assert len(thresholds) == 3
    with np.load(patch_run / "raw/tile0.npz") as raw:
        assert raw["class_prob"].shape == (2, 2, 3)  # 40x48 in 32-pixel windows: a 2x2 grid
        assert json.loads(str(raw["grids"]))["class_prob"] == {"step": 32.0, "size": 32.0, "offset": 0.0}
        assert json.loads(str(raw["family_state"]))["thresholds"] == thresholds


def test_patch_csv_holds_probabilities_and_thresholded_labels(patch_run: Path) -> None:
    with open(patch_run / "out/predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == ["tile0", "tile1", "tile2"]
    thresholds = torch.load(patch_run / "run/checkpoints/latest.pt", weights_only=True)["family_state"]["thresholds"]
    for row in rows:
        for name, threshold in zip(PATCH_CLASSES, thresholds):
            assert int(row[f"label:{name}"]) == int(float(row[f"prob:{name}"]) >= threshold)


def test_patch_scores_are_written(patch_run: Path) -> None:
    scores = json.loads((patch_run / "out/metrics.json").read_text())
    assert {"auc_epithelial", "f1_spindle", "mean_auc", "macro_f1", "exact_match", "hamming_score"} <= set(scores["pooled"])
    assert [row["name"] for row in scores["images"]] == ["tile0", "tile1", "tile2"]


def test_patch_csv_with_other_columns_is_one_line_error(patch_run: Path) -> None:
    bad = patch_run / "bad.csv"
    bad.write_text("name,epithelial,tumour\ntile0,1,0\n")
    line = one_error(run_script("process.py", "--input", patch_run / "raw", "--output", patch_run / "bad", "--gt", bad))
    assert "bad.csv" in line and "name,epithelial,inflammatory,spindle" in line


def test_patch_result_with_a_class_map_folder_is_one_line_error(patch_run: Path, images) -> None:
    line = one_error(run_script("process.py", "--input", patch_run / "raw", "--output", patch_run / "bad2",
                                "--gt", images[0]))
    assert "CSV of image-level labels" in line


# --- staged semantic --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cascade_run(tmp_path_factory, images) -> Path:
    """toy_cascade: stage detect alone, then --resume trains refine; inferred and processed."""
    work = tmp_path_factory.mktemp("cascade")
    ok(run_train("--model", "toy_cascade", "--data", "synthetic", "--out", work / "run", "--stage", "detect"))
    assert not (work / "run/checkpoints/best.pt").exists()  # not every stage trained yet
    ok(run_train("--model", "toy_cascade", "--data", "synthetic", "--out", work / "run", "--resume"))
    ok(run_script("infer.py", "--model-path", work / "run/checkpoints/best.pt", "--input", images[0],
                  "--output", work / "raw", "--device", "cpu", "--quiet"))
    (work / "gt").mkdir()
    for name, (inst_map, _) in images[1].items():
        write_label(work / "gt" / f"{name}.png", (inst_map > 0).astype(np.int32))
    ok(run_script("process.py", "--input", work / "raw", "--output", work / "out", "--gt", work / "gt", "--quiet"))
    return work


def test_each_stage_trains_its_own_network_data_and_phases(cascade_run: Path) -> None:
    stages = cascade_run / "run/stages"
    for name in ("detect", "refine"):
        with open(stages / name / "metrics.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [row["phase"] for row in rows] == [name, name] and "val_miou" in rows[0]
    combined = torch.load(cascade_run / "run/checkpoints/best.pt", map_location="cpu", weights_only=True)
    assert list(combined["stages"]) == ["detect", "refine"]
    assert combined["stages"]["detect"]["config"]["data"]["patch_size"] == 8
    assert combined["stages"]["refine"]["model"]["0.weight"].shape[1] == 4  # RGB + the detect heatmap


def test_resume_of_a_finished_stage_has_nothing_to_do(cascade_run: Path) -> None:
    before = torch.load(cascade_run / "run/stages/refine/checkpoints/latest.pt", weights_only=True)["model"]
    ok(run_train("--model", "toy_cascade", "--data", "synthetic", "--out", cascade_run / "run", "--resume",
                 "--stage", "refine"))
    after = torch.load(cascade_run / "run/stages/refine/checkpoints/latest.pt", weights_only=True)["model"]
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_infer_runs_the_stages_in_order_and_keeps_the_heatmap(cascade_run: Path) -> None:
    with np.load(cascade_run / "raw/tile1.npz") as raw:
        assert raw["heat"].shape == (5, 6, 1)  # one value per 8x8 window of a 40x48 image
        assert raw["fg_prob"].shape == (40, 48, 1)
        assert json.loads(str(raw["grids"])) == {"heat": {"step": 8.0, "size": 8.0, "offset": 0.0}}


def test_semantic_outputs_and_scores(cascade_run: Path) -> None:
    out = cascade_run / "out"
    for folder, suffix in (("label", "png"), ("overlay", "png"), ("geojson", "geojson")):
        assert sorted(p.name for p in (out / folder).iterdir()) == [f"tile{k}.{suffix}" for k in range(3)]
    with open(out / "areas.csv", newline="") as handle:
        areas = list(csv.DictReader(handle))
    assert len(areas) == 6 and sum(int(r["pixels"]) for r in areas if r["image"] == "tile0") == 40 * 48
    assert float(areas[0]["area_mm2"]) == pytest.approx(int(areas[0]["pixels"]) * 0.25**2 / 1e6)
    scores = json.loads((out / "metrics.json").read_text())
    assert {"miou", "fiou", "pixel_accuracy", "iou_nucleus", "dice_background"} <= set(scores["pooled"])
    assert len(scores["images"]) == 3


def test_instance_maps_given_to_the_semantic_scorer_is_one_line_error(cascade_run: Path, images) -> None:
    folder = cascade_run / "inst_gt"
    folder.mkdir()
    for name, (inst_map, _) in images[1].items():
        write_label(folder / f"{name}.png", inst_map)
    line = one_error(run_script("process.py", "--input", cascade_run / "raw", "--output", cascade_run / "bad",
                                "--gt", folder))
    assert "inst_gt" in line and "instance map" in line and "[0, 1]" in line


def test_instance_formats_for_a_semantic_result_are_one_line_error(cascade_run: Path) -> None:
    line = one_error(run_script("process.py", "--input", cascade_run / "raw", "--output", cascade_run / "bad3",
                                "--formats", "mat"))
    assert "label,overlay,geojson,areas" in line


def test_summary_lists_each_stage(tmp_path: Path) -> None:
    lines = ok(run_train("--model", "toy_cascade", "--summary")).stdout.splitlines()
    assert [line for line in lines if line.startswith("stage ")] == ["stage detect", "stage refine"]
    assert sum(line.startswith("params: ") for line in lines) == 2


def test_a_later_stage_before_the_earlier_one_is_one_line_error(tmp_path: Path) -> None:
    done = run_train("--model", "toy_cascade", "--data", "synthetic", "--out", tmp_path / "run", "--stage", "refine")
    line = one_error(done)
    assert "stage 'detect'" in line and "--stage detect" in line
