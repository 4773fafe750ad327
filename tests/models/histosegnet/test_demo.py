"""End to end through train.py: patch labels only in, the three stage maps out."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from loader.synthetic_tissue import generate_tissue_tile
from models.checkpoint import load_checkpoint
from engine.run import RunRequest, run
from loader.synthetic import tile_seed
from models.histosegnet.pipeline import calibrate_thresholds, score_stages, segment_image


def train_demo(out, overrides: list[str]) -> None:
    run(RunRequest(model="histosegnet", profile="demo", data="synthetic", out=str(out), overrides=overrides, quiet=True))


def test_one_short_epoch_writes_a_checkpoint_with_the_scalar_statistics(tmp_path) -> None:
    train_demo(tmp_path / "run", ["data.synthetic.n_train=4", "data.synthetic.n_val=1", "train.phases.0.epochs=1",
                                  "train.phases.0.batch_size=2"])
    family, net, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert len(meta["norm_stats"]["mean"]) == 1 and len(meta["norm_stats"]["class_weights"]) == 4
    assert family.name == "histosegnet" and net.thresholds.shape == (4,)
    with open(tmp_path / "run" / "metrics.csv", newline="") as handle:
        assert {"val_f1", "val_accuracy"} <= set(next(csv.DictReader(handle)))


@pytest.mark.slow
def test_demo_learns_and_each_stage_improves_on_the_one_before(tmp_path) -> None:
    train_demo(tmp_path / "demo", [])
    family, net, _ = load_checkpoint(tmp_path / "demo" / "checkpoints" / "best.pt")
    syn = family.cfg["data"]["synthetic"]
    tiles = [generate_tissue_tile(tile_seed(syn["seed"], syn["n_train"] + i), (syn["size"],) * 2) for i in range(8)]
    calibrate_thresholds(family, net, [{"image": t.image, "labels": t.labels} for t in tiles])
    results = [segment_image(family, net, t.image)["tissue"] for t in tiles]
    scores = score_stages(results, [t.tissue_map for t in tiles])
    miou = {stage: scores[stage]["miou"] for stage in scores}
    assert miou["gradcam"] < miou["adjusted"] <= miou["crf"], miou
    assert miou["crf"] > 0.6, miou
    assert np.isfinite(scores["crf"]["fiou"])
