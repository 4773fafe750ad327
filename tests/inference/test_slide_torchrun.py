"""``torchrun --nproc_per_node 2 infer.py`` over a folder of two slides: each rank runs its own
slide (rank r takes slides r, r + 2, ...), and every output equals a one-process run's.

The ranks exchange nothing (no process group; see docs/wsi.md), so no gloo or NCCL backend is
involved: torchrun's rendezvous starts them and sets RANK / WORLD_SIZE / LOCAL_RANK. The test
is skipped, with torchrun's message, when that rendezvous cannot start here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import infer
import models
from tests.inference.slide_helpers import assert_same_outputs, make_slide
from tests.inference.toy_family import ToyFamily, toy_family

pytestmark = pytest.mark.slow  # two fresh processes import torch: ~15 s on an idle machine

REPO = Path(__file__).resolve().parents[2]
#: What torchrun prints when its own rendezvous (not the program) cannot start.
LAUNCH_FAILURES = ("RendezvousConnectionError", "RendezvousError", "Address already in use", "DistNetworkError")


def _checkpoint(path: Path) -> Path:
    family, net = toy_family(input_size=96, output_size=64, batch_size=4)
    torch.save({"family": family.name, "config": family.cfg, "model": net.state_dict()}, path)
    return path


def test_two_ranks_share_the_slides_and_match_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    for k in range(2):
        make_slide(slides / f"s{k}.tif", (192, 256), tissue=1.0, cell=64, seed=k)
    checkpoint = _checkpoint(tmp_path / "toy.pt")
    args = ["--model-path", str(checkpoint), "--input", str(slides), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "HISTOSEG_PLUGINS": "tests.inference.toy_plugin"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / "infer.py"), *args, "--output", str(tmp_path / "two")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and any(sign in done.stderr for sign in LAUNCH_FAILURES):
        pytest.skip(f"torchrun could not start its processes here: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 of 2: 1 of 2 slides" in done.stderr and "rank 1 of 2: 1 of 2 slides" in done.stderr

    monkeypatch.setitem(models.FAMILIES, ToyFamily.name, ToyFamily)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert infer.main([*args, "--output", str(tmp_path / "one"), "--quiet"]) == 0
    for k in range(2):
        assert_same_outputs(tmp_path / "one" / f"s{k}", tmp_path / "two" / f"s{k}", f"s{k}")
