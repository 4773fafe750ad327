"""H2G-Net through the three scripts on a tiny synthetic cohort: ``train.py`` (both stages,
resume, refine before detect, bad annotations), ``infer.py`` on slides, ``process.py --gt``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import infer
import process
import train

TINY = {
    "data.synthetic": "{train: 2, val: 1, test: 1, size: 1024, mpp: 1.0, seed: 0}",
    "model.detect.hidden": "16", "model.refine.widths": "[4,8,8]", "model.refine.grid": "64",
    "data.detect.mpp": "4.0", "data.detect.size": "32",
    "sampler.clusters": "2", "sampler.embed_size": "32", "sampler.recluster_every": "1",
    "stages.detect.train.phases.0.epochs": "2", "stages.detect.train.phases.0.batches_per_epoch": "3",
    "stages.detect.train.phases.0.batch_size": "8", "stages.refine.train.phases.0.epochs": "2",
}


def settings(**changes: str) -> list[str]:
    """``--set`` arguments of :data:`TINY` with ``changes`` (dots as ``__``)."""
    values = {**TINY, **{key.replace("__", "."): value for key, value in changes.items()}}
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def train_args(out: Path, data: str = "synthetic", *extra: str, **changes: str) -> list[str]:
    return ["--model", "h2gnet", "--profile", "demo", "--data", data, "--out", str(out), "--device", "cpu",
            "--quiet", *settings(**changes), *extra]


def shoelace(ring: np.ndarray) -> float:
    """Signed area of a closed (K, 2) ring in image axes (y down): positive when counter-clockwise on screen."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def user_error(main, argv: list[str], capsys) -> str:
    """The one ``error:`` line of a script that stops on a usage error (exit 2)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("h2g") / "run"
    assert train.main(train_args(out)) == 0
    return out


@pytest.fixture(scope="module")
def slide_outputs(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("h2g_infer")
    argv = ["--model-path", str(run_dir / "checkpoints" / "best.pt"), "--input", str(run_dir / "cohort" / "slides"),
            "--output", str(out), "--device", "cpu", "--quiet"]
    assert infer.main(argv) == 0
    return out


def test_both_stages_train_into_one_checkpoint(run_dir):
    checkpoint = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert list(checkpoint["stages"]) == ["detect", "refine"]
    for stage in ("detect", "refine"):
        with open(run_dir / "stages" / stage / "metrics.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 2 and {"val_dsc", "val_precision", "val_recall"} <= set(rows[0])
    detect = checkpoint["stages"]["detect"]["model"]
    refine = checkpoint["stages"]["refine"]["model"]
    assert all(torch.equal(refine[key], value) for key, value in detect.items() if key.startswith("detect."))
    assert json.loads((run_dir / "cohort" / "cohort.json").read_text())["size"] == [1024, 1024]
    with np.load(run_dir / "stages" / "detect" / "cache" / "clusters.npz") as saved:
        assert int(saved["epoch"]) == 1                                    # recluster_every 1: again before epoch 2
    cached = list((run_dir / "stages" / "refine" / "cache").glob("heatmaps-*/*.npz"))
    assert sorted(path.stem for path in cached) == ["train_000", "train_001", "val_002"]


def test_infer_writes_mask_geojson_heatmap_and_summary(run_dir, slide_outputs):
    folder = slide_outputs / "test_003"
    summary = json.loads((folder / "test_003.summary.json").read_text())
    assert set(summary["seconds"]) >= {"tissue", "detect", "refine", "total"}
    assert 0 < summary["tissue_area_mm2"] < 1.048576 and 0 <= summary["tumour_area_mm2"] <= 1.048576   # 1024² µm²
    assert summary["classes"]["Tumor"]["area_mm2"] == pytest.approx(summary["tumour_area_mm2"])
    with tifffile.TiffFile(folder / "test_003.classes.tif") as tif:
        colours = tif.pages[0].asarray()
    assert colours.shape == (256, 256, 3) and summary["tiff_mpp"] == 4.0   # infer.mask_mpp 4 µm of a 1 mm slide
    mask = (colours == (200, 0, 0)).all(-1)                                # opt/h2gnet.yaml's Tumor colour
    assert np.array_equal(mask, colours.any(-1))                            # the rest is black background
    assert mask.sum() * 16 * 1e-6 == pytest.approx(summary["tumour_area_mm2"], rel=0.02)
    with open(folder / "test_003.areas.csv", newline="") as handle:
        areas = {row["class"]: float(row["area_mm2"]) for row in csv.DictReader(handle)}
    assert areas["Tumor"] == pytest.approx(summary["tumour_area_mm2"]) and set(areas) == {"background", "Tumor"}
    features = json.loads((folder / "test_003.classes.geojson").read_text())["features"]
    if summary["tumour_area_mm2"] > 0:
        assert [f["properties"]["classification"]["name"] for f in features] == ["Tumor"]
        polygons = features[0]["geometry"]["coordinates"]
        points = np.array([p for polygon in polygons for ring in polygon for p in ring])
        assert points.min() >= 0 and points.max() <= 1024                   # level-0 pixel corners
        area_um2 = sum(shoelace(np.array(ring)) for polygon in polygons for ring in polygon)  # holes run clockwise
        assert area_um2 / 1e6 == pytest.approx(summary["tumour_area_mm2"], rel=0.02)
    assert (folder / "test_003.heatmap.png").is_file() and (folder / "test_003.npz").is_file()


@pytest.mark.parametrize("truth", ["cohort", "masks"])
def test_process_scores_patchwise_and_refined_per_slide(run_dir, slide_outputs, tmp_path, truth):
    gt = run_dir / "cohort" / ("cohort.json" if truth == "cohort" else "masks")
    assert process.main(["--input", str(slide_outputs), "--output", str(tmp_path), "--gt", str(gt), "--quiet"]) == 0
    scores = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["name"] for row in scores["per_image"]] == ["test_003", "train_000", "train_001", "val_002"]
    assert {f"{kind}_{key}" for kind in ("patchwise", "refined") for key in ("dsc", "precision", "recall")} <= set(scores["mean"])
    assert 0 <= scores["mean"]["refined_dsc"]["mean"] <= 1


def test_detect_stage_resumes_with_its_clusters(run_dir, tmp_path):
    cohort = str(run_dir / "cohort" / "cohort.json")
    once = {"stages__detect__train__phases__0__epochs": "1", "sampler__recluster_every": "0"}
    assert train.main(train_args(tmp_path, cohort, "--stage", "detect", **once)) == 0
    again = {**once, "stages__detect__train__phases__0__epochs": "2"}
    assert train.main(train_args(tmp_path, cohort, "--stage", "detect", "--resume", **again)) == 0
    latest = torch.load(tmp_path / "stages" / "detect" / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)
    assert latest["epoch"] == 2
    with np.load(tmp_path / "stages" / "detect" / "cache" / "clusters.npz") as saved:
        assert int(saved["epoch"]) == 0                                    # read back, not recomputed


def test_refine_before_detect_names_the_command(run_dir, tmp_path, capsys):
    cohort = str(run_dir / "cohort" / "cohort.json")
    line = user_error(train.main, train_args(tmp_path, cohort, "--stage", "refine"), capsys)
    assert f"python train.py --model h2gnet --profile demo --data {cohort} --out {tmp_path} --stage detect" in line


def _cohort_with_annotation(run_dir: Path, folder: Path, feature: dict) -> str:
    record = json.loads((run_dir / "cohort" / "cohort.json").read_text())
    entry = next(e for e in record["slides"] if e["split"] == "train")
    (folder / "bad.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    entry.update(slide=str(run_dir / "cohort" / entry["slide"]), mask=str(run_dir / "cohort" / entry["mask"]),
                 annotation=str(folder / "bad.geojson"))
    (folder / "cohort.json").write_text(json.dumps({**record, "slides": [entry]}))
    return str(folder / "cohort.json")


def _polygon(ring: list, name: str) -> dict:
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "classification": {"name": name}}}


def test_annotation_without_a_tumour_class(run_dir, tmp_path, capsys):
    cohort = _cohort_with_annotation(run_dir, tmp_path, _polygon([[0, 0], [500, 0], [500, 500], [0, 0]], "Stroma"))
    line = user_error(train.main, train_args(tmp_path / "run", cohort, "--stage", "detect"), capsys)
    assert "no annotation of a tumour class" in line and "the file has 'Stroma'" in line


def test_annotation_outside_the_slide(run_dir, tmp_path, capsys):
    cohort = _cohort_with_annotation(run_dir, tmp_path, _polygon([[900, 0], [3000, 0], [3000, 500], [900, 0]], "Tumor"))
    line = user_error(train.main, train_args(tmp_path / "run", cohort, "--stage", "detect"), capsys)
    assert "spans x 900..3000" in line and "outside the slide's 1024x1024 px" in line
