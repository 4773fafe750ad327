"""The CHR-Net network: published shapes, ImageNet name mapping, window sizes, encoder quirks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from misc.errors import UserError
from models.chrnet.net import (
    CHRNet,
    GlobalContext,
    ResNet34Encoder,
    load_resnet34,
    output_size_for,
    resnet34_mapping,
    zero_state_from_fixture,
)

FIXTURE_NAME = "resnet34_state_keys.json"
# ../shared/fixtures beside the checkout, else beside $HISTOSEG_DATA (../shared/data)
FIXTURE = next(
    (path for path in (Path(__file__).resolve().parents[3].parent / "shared" / "fixtures" / FIXTURE_NAME,
                       Path(os.environ.get("HISTOSEG_DATA") or "/nonexistent").parent / "fixtures" / FIXTURE_NAME)
     if path.is_file()),
    Path(__file__).resolve().parents[3].parent / "shared" / "fixtures" / FIXTURE_NAME,
)
TINY = {"units": (1, 1, 1, 1), "encoder_width": 0.125, "width": 0.125}


@pytest.fixture(scope="module")
def fixture_state() -> dict:
    if not FIXTURE.is_file():
        pytest.skip(f"ResNet-34 state-dict fixture not found at {FIXTURE}")
    return zero_state_from_fixture(FIXTURE)


def test_published_262_window_through_every_stage():
    """Full-width network on the meta device: every stage's (C, H, W) for a 262 input."""
    shapes: dict[str, tuple] = {}
    with torch.device("meta"):
        net = CHRNet(nr_types=5, group_sizes=(4, 4))
        hooks = {
            "stem": net.encoder.resnet.bn1, "side_10x": net.side_10x.block, "side_40x": net.side_40x.block,
            "u3b": net.binary.u3, "u2b": net.binary.u2, "u1b": net.binary.u1,
            "d1r": net.regression.d1, "d2r": net.regression.d2, "d3r": net.regression.d3,
            "u2r": net.regression.u2, "u1r": net.regression.u1, "hrfe1.img1": net.hrfe1.img1,
            "hrfe1.img2": net.hrfe1.img2, "hrfe1.img3": net.hrfe1.img3, "fusion1.mix": net.fusion1.mix,
        }
        for name, module in hooks.items():
            module.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
        net.encoder.register_forward_hook(
            lambda _m, _i, out: shapes.update({f"d{i + 1}": tuple(t.shape[1:]) for i, t in enumerate(out)}))
        for name in ("side_10x", "side_40x"):
            getattr(net, name).register_forward_hook(
                lambda _m, _i, out, name=name: shapes.update(
                    {f"{name}.{i}": tuple(t.shape[1:]) for i, t in enumerate(out)}))
        net.hrfe2.register_forward_hook(
            lambda _m, _i, out: shapes.update({f"hrfe2.h{i + 1}": tuple(t.shape[1:]) for i, t in enumerate(out)}))
        out = net(torch.zeros(1, 3, 262, 262))
    assert shapes == {
        "stem": (64, 256, 256), "d1": (64, 256, 256), "d2": (128, 128, 128), "d3": (256, 64, 64), "d4": (512, 32, 32),
        "side_10x": (128, 64, 64), "side_40x": (128, 64, 64),
        "side_10x.0": (64, 128, 128), "side_10x.1": (128, 64, 64), "side_10x.2": (256, 32, 32),
        "side_40x.0": (64, 128, 128), "side_40x.1": (128, 64, 64), "side_40x.2": (256, 32, 32),
        "u3b": (256, 64, 64), "u2b": (128, 128, 128), "u1b": (64, 256, 256),
        "d1r": (64, 256, 256), "d2r": (128, 128, 128), "d3r": (256, 64, 64),
        "u2r": (128, 128, 128), "u1r": (64, 256, 256),
        "hrfe1.img1": (128, 128, 128), "hrfe1.img2": (256, 64, 64), "hrfe1.img3": (512, 32, 32),
        "hrfe2.h1": (128, 128, 128), "hrfe2.h2": (256, 64, 64), "hrfe2.h3": (512, 32, 32),
        "fusion1.mix": (256, 128, 128),
    }
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "tp": (5, 256, 256), "hrfe1": (4, 256, 256), "hrfe2": (4, 256, 256), "np": (2, 256, 256),
        "marker": (1, 256, 256),
    }


@pytest.mark.parametrize("encoder_width, width", [(0.25, 0.125), (0.125, 0.25)])
def test_encoder_and_branch_widths_may_differ(encoder_width, width):
    net = CHRNet(nr_types=4, group_sizes=(3, 3), units=(1, 1, 1, 1), encoder_width=encoder_width, width=width).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 38, 38))
    assert tuple(out["tp"].shape) == (1, 4, 32, 32) and tuple(out["hrfe2"].shape) == (1, 3, 32, 32)


def test_side_encoders_see_the_crop_and_its_quarter_size_resize():
    net = CHRNet(**TINY).eval()
    seen = {}
    net.side_40x.block.register_forward_pre_hook(lambda _m, args: seen.__setitem__("40x", args[0]))
    net.side_10x.block.register_forward_pre_hook(lambda _m, args: seen.__setitem__("10x", args[0]))
    image = torch.rand(1, 3, 70, 70) * 255
    with torch.no_grad():
        net(image)
    crop = image[..., 3:-3, 3:-3] / 255
    assert torch.equal(seen["40x"], crop)
    assert torch.allclose(seen["10x"], F.interpolate(crop, size=(16, 16), mode="bicubic", align_corners=False))


def test_fixture_loads_strictly_through_the_documented_mapping(fixture_state):
    net = CHRNet(nr_types=5)
    load_resnet34(net.encoder, fixture_state, "fixture")
    assert all(float(p.detach().abs().sum()) == 0 for p in net.encoder.resnet.parameters())
    assert any(float(p.detach().abs().sum()) > 0 for p in net.encoder.context.parameters())  # GC blocks keep their init
    spec = json.loads(FIXTURE.read_text())["default"]
    head = 512 * 1000 + 1000
    assert sum(p.numel() for p in net.encoder.resnet.parameters()) == spec["params"] - head
    assert set(resnet34_mapping(list(spec["state"]))) == set(spec["state"]) - {"fc.weight", "fc.bias"}


def test_fixture_with_a_missing_entry_is_refused(fixture_state):
    state = dict(fixture_state)
    del state["layer3.2.conv1.weight"]
    with pytest.raises(UserError, match="missing.*layer3.2.conv1.weight"):
        load_resnet34(CHRNet(nr_types=5).encoder, state, "fixture")


def test_fixture_does_not_fit_a_narrow_encoder(fixture_state):
    with pytest.raises(UserError, match="width 1.0.*shapes differ"):
        load_resnet34(ResNet34Encoder(width=0.5), fixture_state, "fixture")


@pytest.mark.parametrize("size", [256, 260, 263, 6])
def test_window_the_valid_stem_cannot_take_names_valid_sizes(size):
    with pytest.raises(UserError, match=r"valid sizes are 6 \+ 8k, e.g. .*262"):
        output_size_for(size)


def test_valid_window_sizes():
    assert [output_size_for(s) for s in (14, 102, 134, 254, 262)] == [8, 96, 128, 248, 256]


def test_network_refuses_a_bad_window():
    with pytest.raises(UserError, match="cannot take a 100 px window"):
        CHRNet(**TINY)(torch.zeros(1, 3, 100, 100))


def test_zero_initialised_last_bn_makes_blocks_identities_at_start():
    encoder = ResNet34Encoder(units=(2, 1, 1, 1), width=0.125).eval()
    gammas = [block.bn2.weight.detach() for layer in encoder.resnet.layers() for block in layer]
    assert all(float(gamma.abs().sum()) == 0 for gamma in gammas)
    x = torch.randn(1, 3, 30, 30)
    with torch.no_grad():
        stem = F.relu(encoder.resnet.bn1(encoder.resnet.conv1(x)))
        d1 = encoder(x)[0]
    assert torch.allclose(d1, stem)  # relu(stem + 0 + 0): both group-0 residuals start at 0


def _group0_by_hand(encoder: ResNet34Encoder, x: torch.Tensor, per_block: bool) -> torch.Tensor:
    y = F.relu(encoder.resnet.bn1(encoder.resnet.conv1(x)))
    for block, context in zip(encoder.resnet.layer1, encoder.context[0]):
        y = y + context(block.residual(y))
        y = F.relu(y) if per_block else y
    return y if per_block else F.relu(y)


@pytest.mark.parametrize("per_block", [False, True])
def test_relu_once_per_group_or_per_block(per_block):
    torch.manual_seed(0)
    encoder = ResNet34Encoder(units=(3, 1, 1, 1), width=0.125, block_relu=per_block).eval()
    for block in encoder.resnet.layer1:
        torch.nn.init.normal_(block.bn2.weight)  # non-zero residuals, so the ReLU placement matters
    x = torch.randn(1, 3, 22, 22)
    with torch.no_grad():
        assert torch.allclose(encoder(x)[0], _group0_by_hand(encoder, x, per_block), atol=1e-6)
        assert not torch.allclose(encoder(x)[0], _group0_by_hand(encoder, x, not per_block), atol=1e-6)


def test_global_context_block_formula():
    torch.manual_seed(0)
    block = GlobalContext(16).eval()
    x = torch.randn(2, 16, 5, 7)
    weights = block.mask(x).flatten(2).softmax(-1)  # (N, 1, HW)
    context = (x.flatten(2) * weights).sum(-1)[..., None, None]  # (N, C, 1, 1)
    with torch.no_grad():
        assert torch.allclose(block(x), x + block.transform(context), atol=1e-6)


def test_published_freeze_detaches_groups_but_trains_the_stem():
    net = CHRNet(**TINY)
    net.encoder.freeze(True)
    out = net(torch.rand(1, 3, 38, 38) * 255)
    sum(v.float().mean() for v in out.values()).backward()
    resnet = net.encoder.resnet
    assert resnet.conv1.weight.grad is not None and float(resnet.conv1.weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in resnet.layer1.parameters())
    assert all(p.grad is None for p in net.encoder.context.parameters())
    assert all(p.grad is not None for p in net.hrfe1.parameters())
    frozen = {id(p) for p in net.encoder.frozen_parameters()}
    stem = (resnet.conv1.weight, resnet.bn1.weight, resnet.bn1.bias)
    assert {id(p) for p in net.encoder.parameters()} - frozen == {id(p) for p in stem}
