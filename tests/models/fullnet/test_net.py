"""Tests of the FullNet network: published structure, initialisation, options."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from misc.errors import UserError
from models.fullnet.net import FullNet, layer_dilations, published_state

FIXTURE = Path(__file__).resolve().parents[3].parent / "shared" / "fixtures" / "fullnet_state_keys.json"
TINY = {"n_layers": 4, "growth": 4, "block_dilations": (1, 2, 1)}


@pytest.fixture(scope="module")
def published() -> dict:
    """Parameter count, names and shapes of the published FullNet (shared fixture)."""
    if not FIXTURE.is_file():
        pytest.skip(f"published state-dict fixture not found at {FIXTURE}")
    return json.loads(FIXTURE.read_text())["default"]


@pytest.fixture(scope="module")
def full_net() -> FullNet:
    torch.manual_seed(0)
    return FullNet()


def fixture_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Tensors with the published names and shapes, under DataParallel's ``module.`` prefix."""
    state = {}
    for name, shape in shapes.items():
        dtype = torch.long if name.endswith("num_batches_tracked") else torch.float32
        state[f"module.{name}"] = torch.full(shape, 0.5).to(dtype)
    return {"state_dict": state, "epoch": 300}


def test_published_state_dict_loads_strictly(full_net: FullNet, published: dict) -> None:
    net = FullNet()
    net.load_state_dict(published_state(fixture_state(published["state"])), strict=True)
    assert torch.all(net.conv2.weight == 0.5)


def test_parameter_count_is_published(full_net: FullNet, published: dict) -> None:
    assert sum(p.numel() for p in full_net.parameters()) == published["params"] == 1780233


def test_transition_channels_follow_the_table(full_net: FullNet) -> None:
    outs = [full_net.blocks.get_submodule(f"trans{i}").conv.out_channels for i in range(1, 8)]
    assert outs == [84, 114, 129, 136, 140, 142, 143]


def test_hybrid_dilations_of_the_published_schedule() -> None:
    rates = layer_dilations((1, 2, 4, 8, 16, 4, 1), 6)
    assert rates[3] == (2, 5, 7, 9, 11, 14)
    assert rates[4] == (10, 13, 16, 17, 19, 21)
    assert layer_dilations((8,), 6, hybrid=False) == [(8,) * 6]


def test_layer_dilations_and_padding_are_set(full_net: FullNet) -> None:
    conv = full_net.blocks.block5.denselayer3.conv.conv
    assert conv.dilation == (16, 16) and conv.padding == (16, 16)


def test_unpublished_hybrid_pair_is_a_user_error() -> None:
    with pytest.raises(UserError, match="hybrid"):
        layer_dilations((1, 2), 5)


def test_conv_layer_order_is_conv_leaky_relu_bn(full_net: FullNet) -> None:
    names = [name for name, _ in full_net.conv1.named_children()]
    assert names == ["conv", "relu", "bn"]
    assert full_net.conv1.relu.negative_slope == 0.01


def test_initialisation_std_within_five_percent(full_net: FullNet) -> None:
    for conv in (full_net.blocks.block7.denselayer6.conv.conv, full_net.blocks.trans4.conv):
        expected = math.sqrt(2.0 / (conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels))
        assert abs(conv.weight.std().item() / expected - 1) < 0.05
    bn = full_net.blocks.trans3.bn
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_output_keeps_full_resolution() -> None:
    net = FullNet(**TINY).eval()
    assert net(torch.zeros(2, 3, 37, 29)).shape == (2, 3, 37, 29)


def test_pooling_ablation_restores_resolution() -> None:
    net = FullNet(n_layers=4, growth=4, pooling=True).eval()
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_pooling_needs_multiples_of_16() -> None:
    net = FullNet(n_layers=4, growth=4, pooling=True).eval()
    with pytest.raises(UserError, match="divisible by 16"):
        net(torch.zeros(1, 3, 40, 40))


def test_memory_efficient_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    plain = FullNet(**TINY, drop_rate=0.0)
    efficient = FullNet(**TINY, drop_rate=0.0, memory_efficient=True)
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    grads = []
    for net in (plain, efficient):
        net.train()
        net(x).square().mean().backward()
        grads.append(net.blocks.block1.denselayer1.conv.conv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    assert torch.equal(plain.blocks.trans1.bn.running_mean, efficient.blocks.trans1.bn.running_mean)


def test_summary_reports_the_published_parameter_count(full_net: FullNet) -> None:
    from engine.summary import network_summary

    assert network_summary(full_net, torch.zeros(1, 3, 8, 8)).splitlines()[-1] == "params: 1780233"
