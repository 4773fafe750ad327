"""Test-time BatchNorm adaptation (inference.predict)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inference.predict import adapted_batchnorm, check_adapt_weight
from misc.errors import UserError


def trained_bn() -> nn.BatchNorm2d:
    """A BatchNorm layer in eval mode with known trained statistics (mean 1, var 4)."""
    layer = nn.BatchNorm2d(3)
    layer.running_mean.fill_(1.0)
    layer.running_var.fill_(4.0)
    layer.num_batches_tracked.fill_(7)
    return layer.eval()


def collected() -> torch.Tensor:
    """(4, 3, 5, 5) adaptation data with per-channel means far from the trained ones."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 5, 5, generator=generator) * torch.tensor([2.0, 3.0, 0.5]).view(1, 3, 1, 1) + 10.0


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_statistics_blend_collected_and_trained(weight: float) -> None:
    layer, data = trained_bn(), collected()
    with torch.inference_mode(), adapted_batchnorm(layer, weight, lambda: [layer(part) for part in data.split(2)]):
        mean, var = layer.running_mean.clone(), layer.running_var.clone()
    batch_means = torch.stack([data[:2].mean((0, 2, 3)), data[2:].mean((0, 2, 3))])
    batch_vars = torch.stack([data[:2].var((0, 2, 3)), data[2:].var((0, 2, 3))])
    assert torch.allclose(mean, weight * batch_means.mean(0) + (1 - weight) * 1.0, atol=1e-5)
    assert torch.allclose(var, weight * batch_vars.mean(0) + (1 - weight) * 4.0, atol=1e-4)


def test_layer_normalises_in_eval_mode_inside_the_block() -> None:
    layer, data = trained_bn(), collected()
    with torch.no_grad(), adapted_batchnorm(layer, 1.0, lambda: layer(data)):
        assert not layer.training
        out = layer(data)
    assert abs(out.mean().item()) < 1e-4


def test_trained_buffers_momentum_and_mode_are_restored_after_an_error() -> None:
    layer = trained_bn()
    layer.momentum = 0.3
    with pytest.raises(RuntimeError, match="inside"), torch.no_grad():
        with adapted_batchnorm(layer, 1.0, lambda: layer(collected())):
            raise RuntimeError("inside")
    assert torch.equal(layer.running_mean, torch.ones(3)) and torch.equal(layer.running_var, torch.full((3,), 4.0))
    assert layer.num_batches_tracked.item() == 7 and layer.momentum == 0.3 and not layer.training


def test_collect_that_sees_nothing_is_refused() -> None:
    layer = trained_bn()
    with pytest.raises(UserError, match="saw no data"):
        with adapted_batchnorm(layer, 1.0, lambda: None):
            pass
    assert torch.equal(layer.running_mean, torch.ones(3))


def test_layers_without_running_statistics_are_left_alone() -> None:
    net = nn.Sequential(trained_bn(), nn.BatchNorm2d(3, track_running_stats=False).eval())
    with torch.no_grad(), adapted_batchnorm(net, 1.0, lambda: net(collected())):
        assert net[0].running_mean.mean().item() > 5 and net[1].running_mean is None


@pytest.mark.parametrize("weight", [-0.1, 1.5, "half", None])
def test_weight_outside_0_1_is_refused(weight: object) -> None:
    with pytest.raises(UserError, match="infer.bn_adapt"):
        check_adapt_weight(weight)


def test_layer_the_data_never_reaches_keeps_its_trained_statistics() -> None:
    used, unused = trained_bn(), trained_bn()
    with torch.no_grad(), adapted_batchnorm(nn.ModuleList([used, unused]), 1.0, lambda: used(collected())):
        assert used.running_mean.mean().item() > 5
        assert torch.equal(unused.running_mean, torch.ones(3)) and torch.equal(unused.running_var, torch.full((3,), 4.0))
