"""Grad-CAM as published: against a per-image, per-class autograd transcription; batching; thresholds."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.histosegnet.gradcam import grad_cam
from models.histosegnet.net import HistoNet


def tiny_net(classes: int = 3) -> HistoNet:
    torch.manual_seed(0)
    net = HistoNet(classes=classes, width=0.0625).eval()
    for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    return net


def reference_cam(net: HistoNet, image: torch.Tensor, c: int) -> torch.Tensor:
    """The published recipe for one (image, class), written out with hooks on the full net."""
    store = {}
    relu = net.block3[-1].relu
    handle = relu.register_forward_hook(lambda _m, _i, out: store.update(a=out))
    logits = net(image[None])
    handle.remove()
    a = store["a"]
    (g,) = torch.autograd.grad(logits[0, c], a)
    g = g / (g.pow(2).mean().sqrt() + 1e-5)
    cam = (g.mean(dim=(2, 3))[:, :, None, None] * a).sum(1, keepdim=True)
    cam = F.interpolate(cam, size=image.shape[1:], mode="bilinear", align_corners=False)[0, 0].clamp_min(0)
    return (cam / cam.max().clamp_min(1e-7) * torch.sigmoid(logits[0, c])).detach()


def test_matches_the_published_recipe_and_zeroes_classes_under_threshold() -> None:
    net = tiny_net()
    images = torch.randn(3, 3, 32, 32)
    cams, scores = grad_cam(net, images, torch.tensor([0.0, 1.1, 0.0]))  # class 1 never passes
    assert cams.shape == (3, 3, 32, 32) and scores.shape == (3, 3)
    assert float(cams[:, 1].abs().max()) == 0.0
    for n in range(3):
        for c in (0, 2):
            assert torch.allclose(cams[n, c], reference_cam(net, images[n], c), atol=1e-5)
    assert torch.allclose(cams.amax(dim=(2, 3))[:, [0, 2]], scores[:, [0, 2]], atol=1e-5)  # max = class score


def test_batch_independent_and_works_under_inference_mode() -> None:
    net = tiny_net()
    images, thresholds = torch.randn(4, 3, 32, 32), torch.zeros(3)
    with torch.inference_mode():
        batched, _ = grad_cam(net, images, thresholds)
    alone, _ = grad_cam(net, images[2:3], thresholds)
    assert torch.allclose(batched[2:3], alone, atol=1e-5)


def test_forced_classes_pass_whatever_their_score() -> None:
    net = tiny_net()
    images = torch.randn(2, 3, 32, 32)
    cams, _ = grad_cam(net, images, torch.full((3,), 2.0), forced=torch.tensor([False, True, False]))
    assert float(cams[:, [0, 2]].abs().max()) == 0.0
    assert float(cams[:, 1].amax()) > 0.0
