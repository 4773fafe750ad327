"""Both throw-away families of ``toy_families`` train through ``train.py`` unchanged."""

from __future__ import annotations

import csv

import pytest
import torch

from tests.engine.helpers import PLUGIN, run_train, subprocess_env


def _rows(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def patchcls_run(tmp_path_factory):
    """A finished ``toy_patchcls`` run (plugin given with --plugin)."""
    out = tmp_path_factory.mktemp("patchcls") / "run"
    done = run_train("--model", "toy_patchcls", "--data", "synthetic", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_patch_label_classifier_trains_through_train_py(patchcls_run):
    rows = _rows(patchcls_run)
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert {"train_bce", "val_f1", "val_exact_match", "val_hamming_score"} <= set(rows[0])


def test_checkpoint_carries_family_config_norm_stats_and_rng(patchcls_run):
    checkpoint = torch.load(patchcls_run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert checkpoint["family"] == "toy_patchcls"
    assert checkpoint["config"]["model"] == {"classes": 3, "width": 8}
    assert len(checkpoint["norm_stats"]["mean"]) == 3
    assert set(checkpoint["rng"]) == {"python", "numpy", "torch", "cuda"}


@pytest.fixture(scope="module")
def cascade_run(tmp_path_factory):
    """A finished ``toy_phases`` run (plugin named by $HISTOSEG_PLUGINS)."""
    out = tmp_path_factory.mktemp("cascade") / "run"
    done = run_train("--model", "toy_phases", "--data", "synthetic", "--out", out, plugin=False,
                     env=subprocess_env(HISTOSEG_PLUGINS=PLUGIN))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_cascade_trains_stage_by_stage_through_train_py(cascade_run):
    rows = _rows(cascade_run)
    assert [row["phase"] for row in rows] == ["detect", "refine"]
    assert {"val_pq", "val_dice", "val_aji"} <= set(rows[0])
    assert (cascade_run / "run.yaml").is_file()


def test_tensorboard_gets_losses_lr_scores_and_overlays(cascade_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(cascade_run / "tb")).Reload()
    assert {"train/loss", "train/coarse", "train/fine", "train/lr", "val/pq"} <= set(events.Tags()["scalars"])
    assert {"val/overlay_0", "val/overlay_1"} <= set(events.Tags()["images"])
