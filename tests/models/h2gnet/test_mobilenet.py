"""MobileNetV2: the published structure (strict load of the fixture's names and shapes), the
ImageNet mapping into the 2-class network, and its errors."""

from __future__ import annotations

import pytest
import torch

from misc.errors import UserError
from models.h2gnet.mobilenet import MobileNetV2, imagenet_state, load_imagenet_weights


def zero_state(shapes: dict[str, list[int]], prefix: str = "") -> dict[str, torch.Tensor]:
    """Zeros with the fixture's names and shapes (``num_batches_tracked`` as int64)."""
    return {prefix + name: torch.zeros(shape, dtype=torch.long if name.endswith("num_batches_tracked") else torch.float32)
            for name, shape in shapes.items()}


def test_imagenet_network_loads_the_fixture_strictly(mobilenet_fixture):
    net = MobileNetV2(num_classes=1000)
    assert sum(p.numel() for p in net.parameters()) == mobilenet_fixture["params"]
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == mobilenet_fixture["state"]
    net.load_state_dict(zero_state(mobilenet_fixture["state"]), strict=True)
    assert float(net.features[18][0].weight.detach().abs().sum()) == 0.0


def test_two_class_network_takes_the_features_and_keeps_its_head(mobilenet_fixture, tmp_path):
    torch.manual_seed(0)
    net = MobileNetV2(num_classes=2)
    head = net.classifier[1].weight.detach().clone()
    path = tmp_path / "mobilenet_v2.pth"
    torch.save({"state_dict": zero_state(mobilenet_fixture["state"], prefix="module.")}, path)
    load_imagenet_weights(net, path)
    assert all(float(v.float().abs().sum()) == 0.0 for k, v in net.state_dict().items() if k.startswith("features."))
    assert torch.equal(net.classifier[1].weight, head)
    assert net(torch.full((2, 3, 64, 64), 128.0)).shape == (2, 2)


def test_a_wrong_state_dict_names_the_keys(mobilenet_fixture):
    state = zero_state(mobilenet_fixture["state"])
    del state["features.3.conv.1.0.weight"]
    state["features.99.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match=r"missing \['features.3.conv.1.0.weight'\].*unexpected \['features.99.weight'\]"):
        imagenet_state(MobileNetV2(), state, "mine.pth")
    with pytest.raises(UserError, match="wrong shape"):
        imagenet_state(MobileNetV2(width=0.5), zero_state(mobilenet_fixture["state"]), "mine.pth")


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_imagenet_weights(MobileNetV2(), tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        load_imagenet_weights(MobileNetV2(), tmp_path / "junk.pth")


def test_published_h2gnet_head(mobilenet_fixture, tmp_path):
    net = MobileNetV2(num_classes=2, hidden=100)
    head = [type(m).__name__ for m in net.classifier]
    assert head == ["Linear", "ReLU", "Dropout", "Linear"] and net.classifier[0].out_features == 100
    assert net.classifier[2].p == 0.5
    net.load_state_dict(imagenet_state(net, zero_state(mobilenet_fixture["state"])), strict=True)
    assert net.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 2)


def test_embedding_and_width():
    net = MobileNetV2(num_classes=2, width=0.35).eval()
    features = net.embed(torch.rand(3, 3, 32, 32) * 255)
    assert features.shape == (3, net.last_channels) and net.last_channels == 1280
    assert net.features[1].conv[1].out_channels == 8  # 16 x 0.35 rounded up to a multiple of 8
