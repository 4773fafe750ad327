"""HistoNet X1.7: layer shapes, the Grad-CAM layer, and the VGG16 mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from misc.errors import UserError
from models.histosegnet.net import VGG16_MAPPING, HistoNet, load_vgg16_weights

REPO_ROOT = Path(__file__).resolve().parents[3]


def fixture_file(name: str) -> Path:
    """``shared/fixtures/<name>`` beside the checkout (or one folder further up)."""
    for base in (REPO_ROOT.parent, REPO_ROOT.parent.parent):
        if (base / "shared" / "fixtures" / name).is_file():
            return base / "shared" / "fixtures" / name
    pytest.skip(f"fixture {name} not found beside the checkout")


def vgg16_zero_state() -> dict[str, torch.Tensor]:
    """A VGG16 state dict of zeros with the published names and shapes (every tensor a
    stride-0 view of one zero, so that the 138M-parameter file stays a few kB)."""
    keys = json.loads(fixture_file("vgg16_state_keys.json").read_text())["default"]["state"]
    return {name: torch.zeros(1).expand(shape) for name, shape in keys.items()}


def test_published_layout_and_shapes() -> None:
    net = HistoNet(classes=51).eval()
    x = torch.randn(1, 3, 224, 224)
    acts = net.activations(x)
    assert acts.shape == (1, 256, 56, 56)
    assert bool((acts >= 0).all())  # the ReLU output, before block3's last batch norm
    assert net(x).shape == (1, 51)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256]
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 7 and all(bn.eps == 1e-3 for bn in bns)
    # conv -> ReLU -> BN order inside every unit
    assert list(dict(net.block1[0].named_children())) == ["conv", "relu", "bn"]


def test_head_is_global_max_of_pooled_bn_output() -> None:
    net = HistoNet(classes=3).eval()
    acts = torch.rand(1, 256, 56, 56)
    expected = net.fc(net.block3[-1].bn(acts).amax(dim=(2, 3)))  # 2x2 max-pool then GMP = global max
    assert torch.allclose(net.head(acts), expected, atol=1e-6)


def test_vgg16_mapping_loads_the_seven_convolutions_strictly(tmp_path) -> None:
    state = vgg16_zero_state()
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    net = HistoNet(classes=4)
    loaded = load_vgg16_weights(net, path)
    assert len(loaded) == 14 and set(VGG16_MAPPING.values()) == {n.rsplit(".", 1)[0] for n in state if n.startswith("features.") and int(n.split(".")[1]) <= 14}
    for ours in VGG16_MAPPING:
        conv = net.get_submodule(ours)
        assert float(conv.weight.detach().abs().sum()) == 0.0 and float(conv.bias.detach().abs().sum()) == 0.0
    assert float(net.fc.weight.detach().abs().sum()) > 0  # the dense layer keeps its initialisation


def test_vgg16_missing_or_misshapen_entries_are_refused(tmp_path) -> None:
    state = vgg16_zero_state()
    del state["features.12.bias"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(UserError, match="features.12.bias"):
        load_vgg16_weights(HistoNet(classes=2), tmp_path / "missing.pth")
    torch.save(vgg16_zero_state(), tmp_path / "ok.pth")
    with pytest.raises(UserError, match="model.width must be 1"):
        load_vgg16_weights(HistoNet(classes=2, width=0.5), tmp_path / "ok.pth")
    with pytest.raises(UserError, match="does not exist"):
        load_vgg16_weights(HistoNet(classes=2), tmp_path / "nope.pth")
