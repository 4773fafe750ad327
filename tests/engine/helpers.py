"""Helpers for the engine tests: run ``train.py`` in a subprocess (on CPU, or CUDA for the
``cuda`` tests), kill it mid-run, read checkpoints."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
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


def cuda_env(**extra: str) -> dict[str, str]:
    """:func:`subprocess_env` with the parent's CUDA devices visible."""
    env = subprocess_env(**extra)
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    else:
        env.pop("CUDA_VISIBLE_DEVICES")
    return env


def kill_at(args: list[str], out: Path, marker: re.Pattern, env: dict[str, str], timeout: float = 240) -> None:
    """Start the run ``args`` and SIGKILL it once ``out/run.log`` shows ``marker``."""
    child = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    log = out / "run.log"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if log.is_file() and marker.search(log.read_text()):
                break
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert marker.search(log.read_text()), "the run ended before the kill marker appeared"


def weights(run_dir: Path, name: str = "latest.pt") -> dict[str, torch.Tensor]:
    """The model state dict of a run's checkpoint, read with ``weights_only=True``."""
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)["model"]
