"""HistoSegNet end to end through train.py, infer.py and process.py: patch labels only in, the
three stages' semantic outputs and scores out; bad input as one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import infer
import process
import train
from loader.synthetic_tissue import write_dataset
from models.checkpoint import load_checkpoint

TINY = ["--set", "data.synthetic.n_train=4", "--set", "data.synthetic.n_val=3", "--set", "train.phases.0.epochs=1",
        "--set", "train.phases.0.batch_size=2", "--set", "model.width=0.0625"]


def run_demo(work: Path, *options: str, tiles: int = 2, size: int = 96) -> Path:
    """train.py (demo profile), then infer.py and process.py --gt on held-out tiles."""
    assert train.main(["--model", "histosegnet", "--profile", "demo", "--data", "synthetic", "--out", str(work / "run"),
                       "--quiet", *options]) == 0
    data = write_dataset(work / "tiles", tiles, seed=1000, size=size)
    assert infer.main(["--model-path", str(work / "run" / "checkpoints" / "best.pt"), "--input", str(data / "images"),
                       "--output", str(work / "raw"), "--quiet"]) == 0
    assert process.main(["--input", str(work / "raw"), "--output", str(work / "out"), "--gt", str(data / "tissue"),
                         "--quiet"]) == 0
    return work


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return run_demo(tmp_path_factory.mktemp("histosegnet"), *TINY)


def test_checkpoint_carries_thresholds_and_scalar_statistics(tiny_run: Path) -> None:
    family, _net, meta = load_checkpoint(tiny_run / "run" / "checkpoints" / "best.pt")
    assert len(meta["norm_stats"]["mean"]) == 1 and len(meta["norm_stats"]["std"]) == 1
    assert len(family.extra_state["thresholds"]) == 4  # calibrated on the validation tiles
    with open(tiny_run / "run" / "metrics.csv", newline="") as handle:
        assert {"val_f1", "val_exact_match"} <= set(next(csv.DictReader(handle)))  # patch scores while training


def test_semantic_outputs_of_every_stage(tiny_run: Path) -> None:
    out = tiny_run / "out"
    for fmt, suffix in (("label", "png"), ("overlay", "png"), ("geojson", "geojson")):
        for folder in (fmt, f"{fmt}_gradcam", f"{fmt}_adjusted"):
            assert sorted(p.name for p in (out / folder).iterdir()) == [f"tissue_0000.{suffix}", f"tissue_0001.{suffix}"]
    with open(out / "areas.csv", newline="") as handle:
        assert {row["class"] for row in csv.DictReader(handle)} <= {"background", "epithelium", "stroma", "lymphoid",
                                                                     "adipose"}


def test_scores_of_the_three_stages_in_one_table(tiny_run: Path) -> None:
    pooled = json.loads((tiny_run / "out" / "metrics.json").read_text())["pooled"]
    for stage in ("gradcam", "adjusted", "crf"):
        assert {f"{stage}:miou", f"{stage}:fiou", f"{stage}:pixel_accuracy", f"{stage}:iou_stroma"} <= set(pooled)
    assert pooled["miou"] == pooled["crf:miou"]  # the result is the CRF stage
    assert pooled["gradcam:iou_background"] == 0.0  # Grad-CAM alone never says background


def one_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """The one ``error: ...`` line of ``train.py ARGV``, which exits 2."""
    with pytest.raises(SystemExit) as stop:
        train.main(list(argv))
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert stop.value.code == 2 and len(errors) == 1
    return errors[0]


def test_bad_patch_label_csv_names_row_and_column(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_dataset(tmp_path / "data", 2, size=32)
    text = (data / "labels.csv").read_text().splitlines()
    (data / "labels.csv").write_text("\n".join([text[0], text[1], text[2].rsplit(",", 1)[0] + ",0.5"]) + "\n")
    line = one_error(capsys, "--model", "histosegnet", "--profile", "demo", "--data", f"patch_labels:{data}",
                     "--out", str(tmp_path / "run"), *TINY)
    assert "labels.csv:3: row 'tissue_0001', column 'adipose' is '0.5'" in line
    (data / "labels.csv").write_text("name,epithelium,stroma,muscle,adipose\n" + "\n".join(text[1:]) + "\n")
    line = one_error(capsys, "--model", "histosegnet", "--profile", "demo", "--data", f"patch_labels:{data}",
                     "--out", str(tmp_path / "run2"), *TINY)
    assert "unknown ['muscle'], missing ['lymphoid']" in line


@pytest.mark.slow
def test_demo_learns_and_each_stage_improves_on_the_one_before(tmp_path: Path) -> None:
    run = run_demo(tmp_path, tiles=8, size=224)
    pooled = json.loads((run / "out" / "metrics.json").read_text())["pooled"]
    miou = {stage: pooled[f"{stage}:miou"] for stage in ("gradcam", "adjusted", "crf")}
    assert miou["gradcam"] < miou["adjusted"] <= miou["crf"], miou
    assert miou["crf"] > 0.6, miou
