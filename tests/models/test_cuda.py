"""Every family's networks compute the same function on CUDA as on CPU (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from config import load_config
from models import get_family

pytestmark = pytest.mark.cuda

TINY_HOVERNET = ["model.encoder.units=[1,1,1,1]", "model.encoder.width=0.25", "model.decoder.width=0.25"]
CASES = {
    "hovernet-original": ("hovernet", "paper", [*TINY_HOVERNET, "model.nr_types=5"]),
    "hovernet-fast": ("hovernet", "paper", [*TINY_HOVERNET, "model.mode=fast", "infer.input_size=256",
                                            "infer.output_size=164"]),
    "hovernet-cpu": ("hovernet", "cpu", ["model.zero_init_hv=false"]),
    "fullnet-cpu": ("fullnet", "cpu", []),
}


def _network(case: str) -> tuple[nn.Module, torch.Tensor]:
    """The case's network in eval mode (seeded weights) and a batch of 2 random inputs."""
    family, profile, overrides = CASES[case]
    built = get_family(family)(load_config(family, profile, overrides=overrides))
    torch.manual_seed(0)
    net = built.build_network().eval()
    size = built.example_input().shape[-1]
    return net, torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def _flat(output: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """All of a network's outputs as one float32 CPU vector (dict outputs in key order)."""
    parts = [output[key] for key in sorted(output)] if isinstance(output, dict) else [output]
    return torch.cat([part.detach().float().cpu().flatten() for part in parts])


def _on_cuda(case: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The case's network and inputs on CUDA, with its float32 NCHW output there as the reference."""
    net, images = _network(case)
    net, images = net.cuda(), images.cuda()
    with torch.inference_mode():
        return net, images, _flat(net(images))


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm())


@pytest.mark.parametrize("case", sorted(CASES))
def test_float32_forward_on_cuda_matches_cpu(case: str, strict_float32: None) -> None:
    net, images = _network(case)
    with torch.inference_mode():
        reference = _flat(net(images))
        on_cuda = _flat(net.cuda()(images.cuda()))
    assert _relative_error(on_cuda, reference) < 1e-4


@pytest.mark.parametrize("case", sorted(CASES))
def test_channels_last_on_cuda_matches_contiguous(case: str, strict_float32: None) -> None:
    net, images, reference = _on_cuda(case)
    with torch.inference_mode():
        net = net.to(memory_format=torch.channels_last)
        nhwc = _flat(net(images.contiguous(memory_format=torch.channels_last)))
    assert _relative_error(nhwc, reference) < 1e-4


@pytest.mark.parametrize("case", sorted(CASES))
def test_bf16_autocast_on_cuda_stays_close_to_float32(case: str, strict_float32: None) -> None:
    net, images, reference = _on_cuda(case)
    with torch.inference_mode():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = _flat(net(images))
    assert torch.isfinite(low).all()
    assert _relative_error(low, reference) < 0.1
