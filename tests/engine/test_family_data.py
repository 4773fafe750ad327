"""A family that supplies its own training data (``Family.training_data``), batch sampler,
epoch hook and validation items trains, validates and resumes through the engine."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from engine.run import RunRequest, run
from tests.engine.helpers import PLUGIN


def _train(out: Path, *overrides: str, resume: bool = False) -> None:
    run(RunRequest(model="toy_owndata", out=str(out), plugins=[PLUGIN], device="cpu", quiet=True,
                   overrides=list(overrides), resume=resume or None))


def _checkpoint(out: Path, name: str = "latest.pt") -> dict:
    return torch.load(out / "checkpoints" / name, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("owndata") / "run"
    _train(out)
    return out


def test_own_data_trains_with_its_sampler_epoch_hook_and_validation(full_run):
    with open(full_run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert float(rows[-1]["val_accuracy"]) >= 0.9
    state = _checkpoint(full_run)["family_state"]
    assert state == {"epochs": [0, 1, 2], "sampler": "BalancedBatches"}
    assert (full_run / "toy_owndata.shared").read_text() == str(full_run)
    assert (full_run / "checkpoints" / "best.pt").is_file()
    assert "60 patches, 2 validation groups" in (full_run / "run.log").read_text()


def test_own_data_run_resumes_bit_identically(full_run, tmp_path):
    out = tmp_path / "run"
    _train(out, "train.phases.0.epochs=2")
    _train(out, "train.phases.0.epochs=3", resume=True)
    resumed, straight = _checkpoint(out), _checkpoint(full_run)
    assert resumed["family_state"]["epochs"] == [0, 1, 2]
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
