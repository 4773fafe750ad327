"""infer.py on CUDA writes the same raw maps as on CPU, up to float32 rounding (1e-3 of the map's
largest magnitude: cuDNN's convolution algorithms sum in another order; skipped without CUDA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import infer
from config import load_config
from engine.checkpoint import save_checkpoint
from misc.io import write_image
from loader.synthetic import generate_tile
from models import get_family

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A HoVer-Net checkpoint (demo profile, 5 types, seeded random weights) and a 300x260 tile beside it."""
    folder = tmp_path_factory.mktemp("ckpt")
    cfg = load_config("hovernet", "demo", overrides=["model.nr_types=5", "model.zero_init_hv=false"])
    torch.manual_seed(0)
    net = get_family("hovernet")(cfg).build_network()
    save_checkpoint(folder / "best.pt", {"model": net.state_dict(), "family": "hovernet", "config": cfg, "norm_stats": None})
    write_image(folder / "images" / "tile.png", generate_tile(3, (300, 260))[0])
    return folder / "best.pt"


def _raw_maps(checkpoint: Path, out: Path, device: str, tta: bool) -> dict[str, np.ndarray]:
    argv = ["--model-path", str(checkpoint), "--input", str(checkpoint.parent / "images"), "--output", str(out),
            "--device", device, "--tta" if tta else "--no-tta", "--quiet"]
    assert infer.main(argv) == 0
    with np.load(out / "tile.npz") as raw:
        return {key: raw[key] for key in ("np_prob", "hv", "tp_prob")}


@pytest.mark.parametrize("tta", [False, True], ids=["plain", "tta"])
def test_cuda_raw_maps_match_cpu(tmp_path, checkpoint, strict_float32, tta):
    on_cpu = _raw_maps(checkpoint, tmp_path / "cpu", "cpu", tta)
    on_cuda = _raw_maps(checkpoint, tmp_path / "cuda", "cuda", tta)
    for key, reference in on_cpu.items():
        assert on_cuda[key].shape == reference.shape == (300, 260, reference.shape[-1])
        scale = max(1.0, float(np.abs(reference).max()))
        np.testing.assert_allclose(on_cuda[key], reference, rtol=0, atol=1e-3 * scale, err_msg=key)
