"""Grad-CAM as HistoSegNet computes it (``gradcam.py`` of the published code; SEEDS 4.4).

For every image n and every class c that passes its threshold: ``y_c`` the pre-sigmoid score,
``A`` the activations of the last ReLU of block3, ``g = dy_c/dA`` normalised by its root mean
square (``g / (sqrt(mean g^2) + 1e-5)``), channel weights ``alpha_k = mean_xy g_k``,
``cam = sum_k alpha_k A_k``, bilinearly resized to the input size, ReLU, divided by its
maximum (at least 1e-7) and multiplied by the class's sigmoid score. Classes under threshold
get all-zero maps.

The published code takes the RMS over the whole batch of gradients; here it is taken per image
so that a map does not depend on its batch neighbours. The two differ only through the 1e-5
guard, since the map is divided by its maximum afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.histosegnet.net import HistoNet

RMS_EPS = 1e-5
MAX_EPS = 1e-7


def passing_classes(scores: torch.Tensor, thresholds: torch.Tensor, forced: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C) bool: ``scores >= thresholds`` (per class), or forced on (GlaS forces gland).

    Args:
        scores: (N, C) sigmoid scores.
        thresholds: (C,) decision thresholds.
        forced: (C,) bool classes that always pass, or None.
    """
    passed = scores >= thresholds.to(scores.device)[None]
    if forced is not None:
        passed = passed | forced.to(scores.device)[None]
    return passed


def grad_cam(net: HistoNet, inputs: torch.Tensor, thresholds: torch.Tensor,
             forced: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Score-weighted Grad-CAMs of every class that passes its decision threshold.

    Gradients are computed even when the caller runs under ``torch.inference_mode`` or
    ``no_grad``; only the head is differentiated (one backward pass per class with any passing
    image), so memory stays at one batch of block3 activations and its maps. The network
    should be in eval mode (dropout off, batch-norm statistics fixed).

    Args:
        net: the classifier.
        inputs: (N, 3, H, W) float standardised RGB on the network's device.
        thresholds: (C,) float decision thresholds on the sigmoid scores (the family keeps the
            ROC-optimal ones of the validation split in its ``extra_state``).
        forced: (C,) bool classes treated as passing whatever their score, or None.

    Returns:
        ``cams`` (N, C, H, W) float32 in [0, 1] (zero for classes that do not pass) and
        ``scores`` (N, C) float32 sigmoid scores.
    """
    size = inputs.shape[2:]
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(inputs.device.type, enabled=False):
        x = inputs.detach().clone().float()
        with torch.no_grad():
            acts = net.activations(x)
        acts = acts.detach().requires_grad_(True)
        logits = net.head(acts)
        scores = torch.sigmoid(logits.detach())
        passed = passing_classes(scores, thresholds, forced)
        cams = torch.zeros(x.shape[0], logits.shape[1], *acts.shape[2:], device=x.device)
        wanted = torch.nonzero(passed.any(0)).flatten().tolist()
        for index, c in enumerate(wanted):  # one backward pass per class, not per pixel
            (grads,) = torch.autograd.grad(logits[:, c].sum(), acts, retain_graph=index < len(wanted) - 1)
            rms = grads.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
            alpha = (grads / (rms + RMS_EPS)).mean(dim=(2, 3))
            cams[:, c] = torch.einsum("nkhw,nk->nhw", acts.detach(), alpha)
    cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False).clamp_min(0.0)
    cams = cams / cams.amax(dim=(2, 3), keepdim=True).clamp_min(MAX_EPS)
    cams = cams * (scores * passed)[:, :, None, None]
    return cams, scores
