"""Tests of the HoVer-Net network: geometry, equality with the published forward pass, options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from misc.errors import UserError
from models.hovernet.checkpoint import from_published_state
from models.hovernet.net import GEOMETRIES, HoVerNet, geometry_for, summary

FIXTURE = Path(__file__).resolve().parents[3].parent / "shared" / "fixtures" / "hovernet_state_keys.json"
TINY = {"units": (1, 1, 1, 1), "width": 0.25}


@pytest.fixture(scope="module")
def published_keys() -> dict:
    """Names, shapes and parameter counts of the published network (shared fixture)."""
    if not FIXTURE.is_file():
        pytest.skip(f"published state-dict fixture not found at {FIXTURE}")
    return json.loads(FIXTURE.read_text())


def random_published_state(shapes: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    """Random weights with the published names and shapes, scaled so activations stay O(1).

    Convs: normal with variance 1 / fan-in; BN weight U(0.5, 1.5), bias and running mean N(0, 0.1),
    running variance U(0.5, 2) so that eval-mode batch norm is exercised.
    """
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros((), dtype=torch.long)
        elif name == "upsample2x.unpool_mat":
            state[name] = torch.ones(shape)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[name] = torch.randn(shape, generator=gen) * (1.0 / fan_in) ** 0.5
        elif name.endswith("running_var"):
            state[name] = 0.5 + 1.5 * torch.rand(shape, generator=gen)
        elif name.endswith(".weight"):
            state[name] = 0.5 + torch.rand(shape, generator=gen)
        else:
            state[name] = 0.1 * torch.randn(shape, generator=gen)
    return state


# ---- oracle: the published forward pass (net_desc.py + net_utils.py), restated functionally ----


def _bn_relu(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    """Eval-mode BatchNorm2d (eps 1e-5) + ReLU with the published tensors under ``prefix``."""
    x = F.batch_norm(
        x, state[prefix + "running_mean"], state[prefix + "running_var"],
        state[prefix + "weight"], state[prefix + "bias"], training=False, eps=1e-5,
    )
    return F.relu(x)


def _published_same_pad(x: torch.Tensor, ksize: int, stride: int) -> torch.Tensor:
    """Published ``TFSamepaddingLayer``: padding from the height, applied to both sides."""
    if x.shape[2] % stride == 0:
        pad = max(ksize - stride, 0)
    else:
        pad = max(ksize - (x.shape[2] % stride), 0)
    start = pad // 2
    return F.pad(x, (start, pad - start, start, pad - start))


def _crop_op(x: torch.Tensor, cropping: int) -> torch.Tensor:
    """Published ``crop_op``: remove ``cropping`` rows/cols, the smaller half at the top/left."""
    top = cropping // 2
    bottom = cropping - top
    return x[:, :, top:-bottom, top:-bottom]


def _unpool(x: torch.Tensor) -> torch.Tensor:
    """Published ``UpSample2x``: every pixel repeated into a 2x2 block."""
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def _published_dense_stage(x: torch.Tensor, state: dict, prefix: str, nr_units: int) -> torch.Tensor:
    """Published ``u3`` / ``u2``: conva -> DenseBlock(split 4) -> convf."""
    x = F.conv2d(x, state[prefix + "conva.weight"])
    for idx in range(nr_units):
        unit = f"{prefix}dense.units.{idx}."
        new = F.conv2d(_bn_relu(x, state, unit + "preact_bna/bn."), state[unit + "conv1.weight"])
        new = F.conv2d(_bn_relu(new, state, unit + "conv1/bn."), state[unit + "conv2.weight"], groups=4)
        x = torch.cat([_crop_op(x, x.shape[-1] - new.shape[-1]), new], dim=1)
    x = _bn_relu(x, state, prefix + "dense.blk_bna.bn.")
    return F.conv2d(x, state[prefix + "convf.weight"])


def published_forward(state: dict, images: torch.Tensor, mode: str) -> dict[str, torch.Tensor]:
    """The published ``HoVerNet.forward`` in eval mode, driven by the published state-dict names."""
    x = images / 255.0
    if mode == "fast":
        x = _published_same_pad(x, 7, 1)
    x = _bn_relu(F.conv2d(x, state["conv0./.weight"]), state, "conv0.bn.")
    feats = []
    for group, (nr_units, stride) in enumerate(zip((3, 4, 6, 3), (1, 2, 2, 2))):
        shortcut = F.conv2d(x, state[f"d{group}.shortcut.weight"], stride=stride)
        for idx in range(nr_units):
            unit = f"d{group}.units.{idx}."
            unit_stride = stride if idx == 0 else 1
            new = x if idx == 0 else _bn_relu(x, state, unit + "preact/bn.")
            new = _bn_relu(F.conv2d(new, state[unit + "conv1.weight"]), state, unit + "conv1/bn.")
            new = F.conv2d(_published_same_pad(new, 3, unit_stride), state[unit + "conv2.weight"], stride=unit_stride)
            new = F.conv2d(_bn_relu(new, state, unit + "conv2/bn."), state[unit + "conv3.weight"])
            x = new + shortcut
            shortcut = x
        x = _bn_relu(x, state, f"d{group}.blk_bna.bn.")
        feats.append(x)
    d0, d1, d2, d3 = feats
    d3 = F.conv2d(d3, state["conv_bot.weight"])
    crop0, crop1 = (184, 72) if mode == "original" else (92, 36)
    d0, d1 = _crop_op(d0, crop0), _crop_op(d1, crop1)
    outputs = {}
    for branch in ("tp", "np", "hv"):
        prefix = f"decoder.{branch}."
        if prefix + "u0.conv.weight" not in state:
            continue
        x = _published_dense_stage(_unpool(d3) + d2, state, prefix + "u3.", 8)
        x = _published_dense_stage(_unpool(x) + d1, state, prefix + "u2.", 4)
        x = _unpool(x) + d0
        ksize = state[prefix + "u1.conva.weight"].shape[-1]
        x = F.conv2d(_published_same_pad(x, ksize, 1), state[prefix + "u1.conva.weight"])
        x = _bn_relu(x, state, prefix + "u0.bn.")
        outputs[branch] = F.conv2d(x, state[prefix + "u0.conv.weight"], state[prefix + "u0.conv.bias"])
    return outputs


@pytest.fixture(scope="module", params=[("original_types5", 198), ("fast_types6", 128)], ids=["original", "fast"])
def small_window_outputs(request, published_keys) -> tuple[dict, dict]:
    """(our outputs, published outputs) for one random input window, random published weights.

    The windows are small valid ones (198 -> 8 original, 128 -> 36 fast): every layer, pad and
    crop of the published network runs as at 270 / 256, at a quarter of the CPU time.
    """
    config, side = request.param
    mode, nr_types = config.split("_types")
    state = random_published_state(published_keys[config]["state"], seed=7)
    net = HoVerNet(nr_types=int(nr_types), mode=mode)
    net.load_state_dict(from_published_state(state), strict=True)
    images = 255.0 * torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return net.eval()(images), published_forward(state, images, mode)


# ---- geometry ----


def test_published_window_sizes():
    assert (GEOMETRIES["original"].input_size, GEOMETRIES["original"].output_size) == (270, 80)
    assert (GEOMETRIES["fast"].input_size, GEOMETRIES["fast"].output_size) == (256, 164)


def test_other_valid_input_sizes_shift_output_by_the_same_amount():
    assert GEOMETRIES["original"].output_size_for(270 + 8 * 4) == 80 + 8 * 4
    assert GEOMETRIES["original"].min_input_size == 198
    assert GEOMETRIES["original"].output_size_for(198) == 8
    assert GEOMETRIES["fast"].min_input_size == 96
    assert GEOMETRIES["fast"].output_size_for(96) == 4


@pytest.mark.parametrize("mode,side", [("original", 268), ("original", 190), ("fast", 250), ("fast", 88)])
def test_invalid_input_size_is_a_user_error(mode, side):
    with pytest.raises(UserError, match=f"input side of {side} px"):
        GEOMETRIES[mode].output_size_for(side)


def test_same_mode_output_window_equals_input_window():
    assert (GEOMETRIES["same"].input_size, GEOMETRIES["same"].output_size) == (256, 256)
    assert GEOMETRIES["same"].output_size_for(96) == 96
    assert GEOMETRIES["same"].min_input_size == 8


def test_same_mode_rejects_sides_that_are_not_multiples_of_8():
    with pytest.raises(UserError, match="input side of 100 px"):
        GEOMETRIES["same"].output_size_for(100)


def test_same_mode_forward_keeps_the_input_size():
    net = HoVerNet(nr_types=3, mode="same", decoder_width=0.25, **TINY).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 64, 72))
    assert {name: tuple(o.shape) for name, o in out.items()} == {
        "np": (1, 2, 64, 72), "hv": (1, 2, 64, 72), "tp": (1, 3, 64, 72),
    }


def test_same_mode_has_the_parameters_of_fast_mode():
    fast, same = HoVerNet(nr_types=3, mode="fast", **TINY), HoVerNet(nr_types=3, mode="same", **TINY)
    fast_shapes = {name: tuple(p.shape) for name, p in fast.state_dict().items()}
    assert {name: tuple(p.shape) for name, p in same.state_dict().items()} == fast_shapes


def test_same_mode_equals_fast_mode_inside_the_fast_window():
    """Padding only adds border pixels: with fast-mode weights, the same-mode output at the fast
    window's position equals the fast output (bar the 1 px ring that fast mode's padded ``up1``
    conv pads with zeros)."""
    torch.manual_seed(0)
    fast = HoVerNet(mode="fast", decoder_width=0.25, **TINY).eval()
    same = HoVerNet(mode="same", decoder_width=0.25, **TINY).eval()
    same.load_state_dict(fast.state_dict())
    images = 255.0 * torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast_hv, same_hv = fast(images)["hv"], same(images)["hv"]
    side = fast_hv.shape[-1]
    offset = (160 - side) // 2
    centre = same_hv[..., offset + 1 : offset + side - 1, offset + 1 : offset + side - 1]
    torch.testing.assert_close(centre, fast_hv[..., 1:-1, 1:-1], rtol=0, atol=2e-4)  # float32 sums in another order


def test_unknown_mode_is_a_user_error():
    with pytest.raises(UserError, match="unknown HoVer-Net mode 'pannuke'"):
        geometry_for("pannuke")


# ---- equality with the published network ----


@pytest.mark.parametrize("mode,side,nr_types,out_side", [("original", 270, 5, 80), ("fast", 256, 6, 164)])
def test_full_size_output_shapes(mode, side, nr_types, out_side):
    with torch.device("meta"):
        net = HoVerNet(nr_types=nr_types, mode=mode).eval()
        out = net(torch.zeros(1, 3, side, side))
    assert {name: tuple(o.shape) for name, o in out.items()} == {
        "np": (1, 2, out_side, out_side), "hv": (1, 2, out_side, out_side), "tp": (1, nr_types, out_side, out_side),
    }


def test_outputs_equal_published_forward(small_window_outputs):
    ours, published = small_window_outputs
    assert set(ours) == set(published) == {"np", "hv", "tp"}
    for name in published:
        assert published[name].abs().max() > 0.1  # weights keep the logits non-trivial
        torch.testing.assert_close(ours[name], published[name], rtol=0, atol=1e-4)


# ---- options ----


def test_tiny_config_forward_shapes():
    net = HoVerNet(nr_types=3, mode="fast", **TINY).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 96, 104))
    assert {name: tuple(o.shape) for name, o in out.items()} == {
        "np": (2, 2, 4, 12), "hv": (2, 2, 4, 12), "tp": (2, 3, 4, 12),
    }


def test_instance_only_net_has_no_tp_output():
    net = HoVerNet(nr_types=0, mode="original", **TINY).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 198, 198))
    assert sorted(out) == ["hv", "np"]


def test_width_scales_encoder_channels_only():
    net = HoVerNet(mode="fast", **TINY)
    assert net.stem.conv.out_channels == 16
    assert [group.out_bn.num_features for group in net.encoder] == [64, 128, 256, 512]
    assert net.bottleneck.out_channels == 256
    assert net.decoders["np"].up3.conv_in.out_channels == 256
    assert net.decoders["np"].up3.conv_out.out_channels == 128


def test_decoder_width_scales_decoder_channels_only():
    net = HoVerNet(mode="fast", decoder_width=0.25, **TINY)
    decoder = net.decoders["hv"]
    assert decoder.up3.conv_in.out_channels == 64
    assert decoder.up3.dense.units[0].conv1.out_channels == 32
    assert decoder.up3.dense.units[0].conv2.out_channels == 8
    assert decoder.up3.dense.out_ch == 64 + 8 * 8
    assert decoder.up2.conv_in.out_channels == 32
    assert decoder.up2.conv_out.out_channels == 64
    assert decoder.up1.conv_in.out_channels == 16
    assert decoder.head.conv.in_channels == 16
    assert net.bottleneck.out_channels == 256


def test_decoder_width_keeps_the_windows():
    net = HoVerNet(nr_types=3, mode="fast", decoder_width=0.25, **TINY).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 96, 104))
    assert {name: tuple(o.shape) for name, o in out.items()} == {
        "np": (1, 2, 4, 12), "hv": (1, 2, 4, 12), "tp": (1, 3, 4, 12),
    }


def test_shared_decoder_gives_every_branch_from_one_decoder():
    net = HoVerNet(nr_types=3, mode="fast", shared_decoder=True, **TINY).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 96, 104))
    assert list(net.decoders) == ["shared"]
    assert net.decoders["shared"].head.conv.out_channels == 2 + 2 + 3
    assert {name: tuple(o.shape) for name, o in out.items()} == {
        "np": (2, 2, 4, 12), "hv": (2, 2, 4, 12), "tp": (2, 3, 4, 12),
    }


def test_shared_decoder_splits_its_head_in_branch_order():
    net = HoVerNet(nr_types=3, mode="fast", shared_decoder=True, **TINY).eval()
    images = torch.rand(1, 3, 96, 96) * 255
    stacked = []
    net.decoders["shared"].head.register_forward_hook(lambda _m, _i, output: stacked.append(output))
    with torch.no_grad():
        out = net(images)
    assert torch.equal(torch.cat([out["np"], out["hv"], out["tp"]], dim=1), stacked[0])


def test_shared_decoder_has_one_decoder_less_parameters():
    def count(net: torch.nn.Module) -> int:
        return sum(p.numel() for p in net.parameters())

    separate = HoVerNet(mode="same", decoder_width=0.25, **TINY)
    shared = HoVerNet(mode="same", decoder_width=0.25, shared_decoder=True, **TINY)
    one_decoder = count(separate.decoders["np"])
    head_rows = separate.decoders["np"].head.conv.in_channels + 1
    assert count(shared) == count(separate) - one_decoder + 2 * head_rows


@pytest.mark.parametrize("shared, rows", [(False, slice(0, 2)), (True, slice(2, 4))])
def test_branch_head_names_the_hv_rows(shared, rows):
    net = HoVerNet(nr_types=3, mode="fast", shared_decoder=shared, **TINY)
    conv, hv_rows = net.branch_head("hv")
    assert hv_rows == rows
    assert conv is (net.decoders["shared"] if shared else net.decoders["hv"]).head.conv


def test_wrong_image_shape_is_a_user_error():
    net = HoVerNet(mode="fast", **TINY)
    with pytest.raises(UserError, match=r"\(N, 3, H, W\)"):
        net(torch.zeros(1, 1, 96, 96))


@pytest.mark.parametrize(
    "options", [{"nr_types": 1}, {"units": (1, 1, 1)}, {"width": 0.0}, {"decoder_width": 0.0}]
)
def test_impossible_options_are_user_errors(options):
    with pytest.raises(UserError, match="model\\."):
        HoVerNet(**options)


def test_channels_last_gives_the_same_outputs():
    torch.manual_seed(0)
    net = HoVerNet(nr_types=2, mode="fast", **TINY).eval()
    images = 255.0 * torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        plain = net(images)
        net_cl = net.to(memory_format=torch.channels_last)
        last = net_cl(images.to(memory_format=torch.channels_last))
    for name in plain:
        torch.testing.assert_close(last[name], plain[name], rtol=1e-4, atol=1e-4)


def test_encoder_and_decoder_parameters_partition_the_network():
    net = HoVerNet(nr_types=2, mode="fast", **TINY)
    enc = {id(p) for p in net.encoder_parameters()}
    dec = {id(p) for p in net.decoder_parameters()}
    assert not enc & dec
    assert enc | dec == {id(p) for p in net.parameters()}


def test_frozen_encoder_gets_no_gradient_but_updates_batch_norm_statistics():
    torch.manual_seed(0)
    net = HoVerNet(nr_types=2, mode="fast", **TINY).train()
    net.freeze_encoder(True)
    running_mean = net.encoder[2].units[0].bn1.running_mean.clone()
    out = net(255.0 * torch.rand(2, 3, 96, 96))
    sum(o.square().mean() for o in out.values()).backward()
    assert all(p.grad is None for p in net.frozen_encoder_parameters())
    assert net.stem.conv.weight.grad is not None
    assert net.encoder[0].shortcut.weight.grad is not None
    assert net.decoders["tp"].up3.conv_in.weight.grad is not None
    assert not torch.equal(net.encoder[2].units[0].bn1.running_mean, running_mean)


def test_unfreezing_restores_encoder_gradients():
    net = HoVerNet(mode="fast", **TINY).train()
    net.freeze_encoder(True)
    net.freeze_encoder(False)
    out = net(255.0 * torch.rand(1, 3, 96, 96))
    out["np"].mean().backward()
    assert net.encoder[3].units[0].conv2.weight.grad is not None


def test_summary_lists_layers_and_trainable_parameter_count():
    net = HoVerNet(nr_types=3, mode="fast", **TINY)
    net.freeze_encoder(True)
    text = summary(net, 96)
    lines = text.splitlines()
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert lines[-1] == f"params: {trainable}"
    assert lines[1].split() == ["stem.conv", "(1,", "16,", "96,", "96)", str(16 * 3 * 7 * 7)]
    assert any(line.split()[0] == "output[tp]" and "(1, 3, 4, 4)" in line for line in lines)
