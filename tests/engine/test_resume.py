"""``--resume`` after SIGKILL mid-epoch gives weights bit-identical to an uninterrupted run."""

from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path

import pytest
import torch

from tests.engine.helpers import REPO_ROOT, kill_at, subprocess_env, train_args, weights

# Four epochs of eight steps (32 tiles, batch 4): two phases, Adam then SGD with momentum;
# random 24-pixel crops, flips and dropout exercise every random state.
RESUME_ARGS = (
    "--model", "toy_phases", "--data", "synthetic",
    "--set", "data.synthetic.n_train=32", "--set", "data.patch_size=24",
    "--set", "data.augment=[{op: flip, axis: horizontal, p: 0.5}, {op: flip, axis: vertical, p: 0.5}]",
    "--set", "train.phases=["
    "{name: detect, epochs: 2, batch_size: 4, freeze: [refine], optimizer: {name: adam, lr: 0.01},"
    " schedule: {name: step, step_size: 1, gamma: 0.5}, loss_weights: {coarse: 1.0, fine: 0.5}},"
    "{name: refine, epochs: 2, batch_size: 4, freeze: [detect], optimizer: {name: sgd, lr: 0.1, momentum: 0.9},"
    " schedule: {name: cosine}, loss_weights: {coarse: 0.0, fine: 1.0}}]",
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("uninterrupted")
    done = subprocess.run(train_args(*RESUME_ARGS, "--out", out), cwd=REPO_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return weights(out)


def _kill_at(out: Path, marker: re.Pattern, num_workers: int) -> None:
    """Start a slowed-down run and SIGKILL it once its log shows ``marker``."""
    args = train_args(*RESUME_ARGS, "--set", f"data.num_workers={num_workers}", "--out", out)
    kill_at(args, out, marker, subprocess_env(TOY_STEP_SLEEP="0.15"))


@pytest.mark.parametrize(("num_workers", "killed_epoch", "killed_step"), [(0, 2, 12), (2, 4, 27)])
def test_resume_after_sigkill_is_bit_identical(tmp_path, uninterrupted, num_workers, killed_epoch, killed_step):
    out = tmp_path / "run"
    _kill_at(out, re.compile(rf"epoch {killed_epoch} step {killed_step} "), num_workers)
    saved = torch.load(out / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == killed_epoch - 1  # killed mid-epoch, after the previous epoch's checkpoint

    args = train_args(*RESUME_ARGS, "--set", f"data.num_workers={num_workers}", "--out", out, "--resume")
    done = subprocess.run(args, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "metrics.csv", newline="") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2", "3", "4"]
    resumed = weights(out)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[key], uninterrupted[key]) for key in resumed)
