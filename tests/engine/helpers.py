"""Helpers for the engine tests: run ``train.py`` in a subprocess on CPU, read checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN = "tests.engine.toy_families"


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a child run: repo on the path, one thread, no CUDA."""
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    env.pop("HISTOSEG_PLUGINS", None)
    env.update(extra)
    return env


def train_args(*args: str | os.PathLike, plugin: bool = True) -> list[str]:
    """``python train.py [--plugin toy] --device cpu --num-threads 1 --quiet ARGS``."""
    head = [sys.executable, str(REPO_ROOT / "train.py"), "--device", "cpu", "--num-threads", "1", "--quiet"]
    return head + (["--plugin", PLUGIN] if plugin else []) + [str(a) for a in args]


def run_train(*args: str | os.PathLike, plugin: bool = True, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``train.py`` to completion and return the finished process (text output)."""
    return subprocess.run(
        train_args(*args, plugin=plugin), cwd=REPO_ROOT, env=env or subprocess_env(),
        capture_output=True, text=True, timeout=timeout,
    )


def weights(run_dir: Path, name: str = "latest.pt") -> dict[str, torch.Tensor]:
    """The model state dict of a run's checkpoint, read with ``weights_only=True``."""
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)["model"]
