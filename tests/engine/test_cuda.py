"""Training on CUDA: bf16 autocast and channels_last, resume after a kill, one NCCL rank under
``torchrun`` (skipped without CUDA)."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.engine.helpers import REPO_ROOT, cuda_env, kill_at, train_args, weights
from tests.engine.test_resume import RESUME_ARGS

pytestmark = pytest.mark.cuda

DEMO_ARGS = (
    "--model", "hovernet", "--profile", "demo", "--data", "synthetic", "--device", "cuda",
    "--set", "data.synthetic.n_train=8", "--set", "data.synthetic.n_val=1", "--set", "train.phases.0.epochs=2",
    "--set", "train.val_every=1", "--set", "train.channels_last=true",
)


def _metrics(out: Path) -> list[dict[str, str]]:
    """The rows of a run's ``metrics.csv``."""
    with open(out / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_hovernet_trains_on_cuda_with_bf16_autocast_and_channels_last(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(train_args(*DEMO_ARGS, "--out", out, plugin=False), cwd=REPO_ROOT, env=cuda_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on cuda:0" in (out / "run.log").read_text()
    rows = _metrics(out)
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert all(0 < float(row["train_loss"]) < 100 for row in rows)
    assert 0.0 <= float(rows[-1]["val_pq"]) <= 1.0
    trained = weights(out, "best.pt")
    assert all(torch.isfinite(value).all() for value in trained.values() if value.is_floating_point())
    assert all(value.device.type == "cpu" for value in trained.values())


def test_resume_on_cuda_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    whole = tmp_path / "whole"
    args = train_args(*RESUME_ARGS, "--device", "cuda", "--set", "train.amp=false", "--out", whole)
    done = subprocess.run(args, cwd=REPO_ROOT, env=cuda_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "killed"
    args = train_args(*RESUME_ARGS, "--device", "cuda", "--set", "train.amp=false", "--out", out)
    kill_at(args, out, re.compile(r"epoch 3 step 20 "), cuda_env(TOY_STEP_SLEEP="0.15"))
    done = subprocess.run([*args, "--resume"], cwd=REPO_ROOT, env=cuda_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [row["epoch"] for row in _metrics(out)] == ["1", "2", "3", "4"]
    resumed, reference = weights(out), weights(whole)
    assert all(torch.allclose(resumed[key], reference[key], rtol=1e-4, atol=1e-5) for key in reference)


def test_one_nccl_rank_under_torchrun_trains_on_cuda(tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               str(REPO_ROOT / "tests" / "engine" / "ddp_worker.py"), str(out),
               "--set", "data.synthetic.n_train=8", "--set", "train.phases.0.epochs=2"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=cuda_env(DDP_DEVICE="cuda"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on cuda:0" in (out / "run.log").read_text()
    rank0 = torch.load(out / "rank0.pt", weights_only=True)
    assert all(torch.equal(rank0[key].cpu(), weights(out)[key]) for key in rank0)
