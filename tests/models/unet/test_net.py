"""The U-Net network: shapes, the stride-1 stem, the shared decoder, and the Cadene name mapping."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from misc.errors import UserError
from models.unet.encoder import (
    VARIANT_UNITS,
    SEResNeXtEncoder,
    cadene_to_ours,
    load_cadene_state,
    load_pretrained,
)
from models.unet.net import UNet
from tests.conftest import REPO_ROOT, shared_data_root

# ../shared/fixtures beside the checkout, or beside $HISTOSEG_DATA
FIXTURES = (shared_data_root() or REPO_ROOT.parent / "shared" / "data").parent / "fixtures"
TINY = dict(units=(1, 1, 1, 1), width=0.25, groups=8, decoder_width=0.25)


def fixture_state(variant: str, device: str = "meta") -> tuple[dict[str, torch.Tensor], int]:
    """A state dict of zeros with every name and shape of a Cadene fixture, and its parameter count."""
    path = FIXTURES / f"{variant}_state_keys.json"
    if not path.is_file():
        pytest.skip(f"fixture {path} not found beside the checkout")
    entry = json.loads(path.read_text())["default"]
    state = {
        name: torch.zeros(shape, dtype=torch.long if name.endswith("num_batches_tracked") else torch.float32, device=device)
        for name, shape in entry["state"].items()
    }
    return state, int(entry["params"])


def test_outputs_are_the_input_window():
    net = UNet(nr_types=5, **TINY).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 48, 64) * 255)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"np": (2, 2, 48, 64), "hv": (2, 2, 48, 64), "tp": (2, 5, 48, 64)}


def test_stem_has_stride_one_and_features_are_at_1_2_4_8():
    encoder = SEResNeXtEncoder(units=(1, 1, 1, 1), width=0.25, groups=8)
    assert encoder.stem.conv.stride == (1, 1) and encoder.stem.conv.kernel_size == (7, 7)
    assert not any(isinstance(m, nn.MaxPool2d) for m in encoder.modules())
    with torch.no_grad():
        features = encoder(torch.zeros(1, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in features] == [(64, 64), (32, 32), (16, 16), (8, 8)]
    assert [f.shape[1] for f in features] == encoder.out_channels == [64, 128, 256, 512]


def test_published_widths_and_decoder_layout():
    with torch.device("meta"):
        net = UNet(nr_types=7)
    assert net.encoder.out_channels == [256, 512, 1024, 2048]
    assert (net.bottleneck.in_channels, net.bottleneck.out_channels) == (2048, 1024)
    assert (net.decoder.up3.conv_in.in_channels, net.decoder.up3.conv_in.out_channels) == (1024, 256)
    assert (net.decoder.up2.conv_in.in_channels, net.decoder.up2.conv_in.out_channels) == (512, 128)
    assert (net.decoder.up1.conv_in.in_channels, net.decoder.up1.conv_in.out_channels) == (256, 64)
    assert len(net.decoder.up3.dense.units) == 8 and len(net.decoder.up2.dense.units) == 4
    assert all(conv.padding == (1, 1) for conv in net.decoder.modules() if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3))
    assert {name: head.conv.out_channels for name, head in net.heads.items()} == {"np": 2, "hv": 2, "tp": 7}
    assert net.decoder.dropout.p == 0.5 and isinstance(net.decoder.dropout, nn.Dropout2d)


def test_dropout_runs_after_each_of_the_three_upsamplings():
    net = UNet(nr_types=3, **TINY)
    calls = []
    net.decoder.dropout.register_forward_hook(lambda _m, inputs, _o: calls.append(tuple(inputs[0].shape[-2:])))
    net(torch.zeros(1, 3, 32, 32))
    assert calls == [(8, 8), (16, 16), (32, 32)]


@pytest.mark.parametrize("variant", ["se_resnext50_32x4d", "se_resnext101_32x4d"])
def test_every_fixture_name_and_shape_loads_strictly(variant):
    state, params = fixture_state(variant)
    with torch.device("meta"):
        encoder = SEResNeXtEncoder(units=VARIANT_UNITS[variant])
    load_cadene_state(encoder, state, variant)
    classifier = sum(v.numel() for k, v in state.items() if k.startswith("last_linear."))
    assert sum(p.numel() for p in encoder.parameters()) + classifier == params
    mapped = {cadene_to_ours(name) for name in state} - {None}
    assert mapped == set(encoder.state_dict())


def test_name_mapping_table():
    assert cadene_to_ours("layer0.conv1.weight") == "stem.conv.weight"
    assert cadene_to_ours("layer0.bn1.running_var") == "stem.bn.running_var"
    assert cadene_to_ours("layer3.5.se_module.fc2.bias") == "groups.2.5.se_module.fc2.bias"
    assert cadene_to_ours("layer1.0.downsample.1.weight") == "groups.0.0.downsample.1.weight"
    assert cadene_to_ours("last_linear.weight") is None


def test_weights_of_another_depth_name_the_first_mismatched_key():
    state, _ = fixture_state("se_resnext101_32x4d")
    with torch.device("meta"):
        encoder = SEResNeXtEncoder(units=VARIANT_UNITS["se_resnext50_32x4d"])
    with pytest.raises(UserError, match=r"'groups\.2\.6\.conv1\.weight' is not a parameter"):
        load_cadene_state(encoder, state, "se101.pth")


def test_weights_of_another_network_are_refused(tmp_path):
    state, _ = fixture_state("se_resnext50_32x4d", device="cpu")
    state["layer1.0.conv2.weight"] = torch.zeros(128, 8, 3, 3)
    torch.save(state, tmp_path / "wrong.pth")
    encoder = SEResNeXtEncoder(units=VARIANT_UNITS["se_resnext50_32x4d"])
    with pytest.raises(UserError, match=r"'groups\.0\.0\.conv2\.weight' has shape \(128, 8, 3, 3\)"):
        load_pretrained(encoder, tmp_path / "wrong.pth")


def test_pretrained_file_loads_values_and_tolerates_missing_batch_counters(tmp_path):
    encoder = SEResNeXtEncoder(units=(1, 1, 1, 1), width=0.25, groups=8)
    published = {}
    for name, value in encoder.state_dict().items():
        cadene = name.replace("stem.conv.", "layer0.conv1.").replace("stem.bn.", "layer0.bn1.")
        if cadene.startswith("groups."):
            group, rest = cadene.split(".", 2)[1:]
            cadene = f"layer{int(group) + 1}.{rest}"
        if not cadene.endswith("num_batches_tracked"):  # files saved before PyTorch 0.4.1 lack them
            published[cadene] = torch.full_like(value, 0.5)
    published["last_linear.weight"] = torch.zeros(10, 4)
    torch.save(published, tmp_path / "cadene.pth")
    fresh = SEResNeXtEncoder(units=(1, 1, 1, 1), width=0.25, groups=8)
    load_pretrained(fresh, tmp_path / "cadene.pth")
    assert torch.all(fresh.groups[3][0].se_module.fc2.bias == 0.5)
    assert torch.all(fresh.stem.conv.weight == 0.5)


def test_missing_pretrained_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        UNet(nr_types=3, **TINY, pretrained=tmp_path / "none.pth")


def test_zero_init_hv_starts_tanh_at_its_steepest():
    torch.manual_seed(0)
    published = UNet(nr_types=3, **TINY).eval()
    zeroed = UNet(nr_types=3, **TINY, zero_init_hv=True).eval()
    images = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        assert published(images)["hv"].abs().mean() > 1.0  # Kaiming fan-out: tanh saturates
        assert torch.all(zeroed(images)["hv"] == 0.0)


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="nr_types must be >= 2"):
        UNet(nr_types=1, **TINY)
    with pytest.raises(UserError, match="4 positive unit counts"):
        SEResNeXtEncoder(units=(1, 1, 1))
    with pytest.raises(UserError, match="multiples of 8"):
        UNet(nr_types=3, **TINY)(torch.zeros(1, 3, 36, 32))
