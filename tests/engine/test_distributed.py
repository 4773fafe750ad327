"""Two gloo processes under ``torchrun`` train like one process with the same global batch."""

from __future__ import annotations

import subprocess
import sys

import torch

from tests.engine.helpers import REPO_ROOT, subprocess_env, weights

# 8 tiles; global batch 4 = one process x 4 or two processes x 2; two epochs, no augmentation.
SETTINGS = ("data.synthetic.n_train=8", "train.phases=[{name: all, epochs: 2, batch_size: %d, freeze: [],"
            " optimizer: {name: adam, lr: 0.01}, schedule: {name: step, step_size: 1, gamma: 0.5},"
            " loss_weights: {bce: 1.0}}]")


def _settings(batch_size: int) -> list[str]:
    return [SETTINGS[0], SETTINGS[1] % batch_size]


def test_two_gloo_ranks_match_each_other_and_one_process(tmp_path, train):
    single = tmp_path / "single"
    sets = [arg for setting in _settings(4) for arg in ("--set", setting)]
    train("--model", "toy_patchcls", "--data", "synthetic", "--out", single, *sets)

    ddp = tmp_path / "ddp"
    ddp.mkdir()
    worker_sets = [arg for setting in _settings(2) for arg in ("--set", setting)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO_ROOT / "tests" / "engine" / "ddp_worker.py"), str(ddp), *worker_sets]
    done = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    rank0 = torch.load(ddp / "rank0.pt", weights_only=True)
    rank1 = torch.load(ddp / "rank1.pt", weights_only=True)
    reference = weights(single)
    assert all(torch.equal(rank0[key], rank1[key]) for key in rank0)
    assert all(torch.allclose(rank0[key], reference[key], rtol=0, atol=1e-6) for key in reference)
    assert all(torch.equal(rank0[key], weights(ddp)[key]) for key in rank0)  # rank 0 wrote the checkpoint
    assert not all(torch.equal(rank0[key], _initial_weights()[key]) for key in rank0)


def _initial_weights() -> dict[str, torch.Tensor]:
    """The toy classifier's weights before training (same seed as the runs)."""
    from engine.run import seed_everything
    from tests.engine.toy_families import PatchClassifierFamily

    seed_everything(3)
    return PatchClassifierFamily({"model": {"classes": 3, "width": 8}}).build_network().state_dict()
