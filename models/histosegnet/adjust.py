"""Inter-class adjustments of HistoSegNet (``modify_by_htt`` and ``get_cs_gradcam``; SEEDS 4.5).

From the classifier's Grad-CAMs of one image, for one segmentation pass:

1. ``raw`` (K, H, W): each class's Grad-CAM, zero for the synthesised classes. The Grad-CAM-only
   stage labels pixels by its argmax with the pass's ``gradcam_excluded`` classes left out.
2. Background = ``0.75 * sigmoid(4 (mean RGB - 240))`` of the raw uint8 image, Gaussian-smoothed
   (sigma 2, reflect borders as ``scipy.ndimage.gaussian_filter``), minus the maximum Grad-CAM of
   the background-exception classes, clipped to [0, 1].
3. Other = ``max(0.05 (1 - max over the pass's maps), maps of other_from)``, clipped to [0, 1]
   (functional pass: the adipose maps of the morphological pass; GlaS: no extra maps).
4. Class subtraction: every class except Other loses the maximum of the other classes' maps.
   ``sequential`` (default) does it in place in label order as the published code does, so a
   class is compared with the already-subtracted maps of the classes before it (this is what the
   published numbers come from); ``sequential=False`` compares every class with the maps as they
   were before any subtraction (order-independent). Clipped to [0, 1] at the end.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from models.histosegnet.classes import ResolvedPass

BACKGROUND_MAX = 0.75
BACKGROUND_LEVEL = 240.0
BACKGROUND_STEEPNESS = 4.0
BACKGROUND_SIGMA = 2.0
OTHER_FACTOR = 0.05


def gaussian_smooth(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter`` of each (H, W) map in (..., H, W) float x (mode
    'reflect': borders mirrored including the edge pixel; radius ``int(truncate sigma + 0.5)``)."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    shape = x.shape
    maps = x.reshape(-1, 1, *shape[-2:])
    for dim in (2, 3):
        maps = _reflect_pad(maps, radius, dim)
        weight = kernel.view(1, 1, -1, 1) if dim == 2 else kernel.view(1, 1, 1, -1)
        maps = F.conv2d(maps, weight)
    return maps.reshape(shape)


def _reflect_pad(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Pad ``radius`` samples on both sides of ``dim`` by half-sample symmetric reflection
    (``d c b a | a b c d | d c b a``), repeated for maps shorter than the radius."""
    size = x.shape[dim]
    index = torch.arange(-radius, size + radius, device=x.device)
    period = 2 * size
    folded = torch.remainder(index, period)
    folded = torch.where(folded >= size, period - 1 - folded, folded)
    return x.index_select(dim, folded)


def background_map(image: torch.Tensor, sigma: float = BACKGROUND_SIGMA) -> torch.Tensor:
    """Brightness background activation (before the exception classes are subtracted).

    Args:
        image: (H, W, 3) RGB in 0-255 (uint8 or float), the image at the maps' resolution.

    Returns:
        (H, W) float32 ``gaussian(0.75 * sigmoid(4 (mean RGB - 240)), sigma)``.
    """
    brightness = image.float().mean(-1)
    return gaussian_smooth(BACKGROUND_MAX * torch.sigmoid(BACKGROUND_STEEPNESS * (brightness - BACKGROUND_LEVEL)), sigma)


def max_over_others(maps: torch.Tensor) -> torch.Tensor:
    """(K, H, W) -> (K, H, W): for every class the maximum of the other classes' maps
    (-inf when K = 1)."""
    if maps.shape[0] == 1:
        return torch.full_like(maps, -math.inf)
    top2 = maps.topk(2, dim=0)
    first, second, winner = top2.values[0], top2.values[1], top2.indices[0]
    labels = torch.arange(maps.shape[0], device=maps.device)[:, None, None]
    return torch.where(labels == winner[None], second[None], first[None])


def subtract_classes(maps: torch.Tensor, exempt: int | None = None, sequential: bool = True) -> torch.Tensor:
    """Class subtraction, unclipped: (K, H, W) -> (K, H, W) (see the module docstring).

    Args:
        maps: class maps of one image.
        exempt: label that is not subtracted from (Other), or None.
        sequential: the published in-place order; False: order-independent.
    """
    if not sequential:
        out = maps - max_over_others(maps)
        if exempt is not None:
            out[exempt] = maps[exempt]
        return out
    out = maps.clone()
    labels = list(range(maps.shape[0]))
    for c in labels:  # over classes (published order), each step vectorised over pixels
        if c == exempt or len(labels) == 1:
            continue
        others = [k for k in labels if k != c]
        out[c] = out[c] - out[others].amax(0)
    return out


class PassMaps(NamedTuple):
    """One image's maps for one pass; (K, H, W) float32 each.

    Attributes:
        raw: the Grad-CAMs in the pass's labels (synthesised classes zero).
        adjusted: after background/other synthesis and class subtraction, clipped to [0, 1].
        subtracted: the same before clipping (what a later pass's ``other_from`` reads).
    """

    raw: torch.Tensor
    adjusted: torch.Tensor
    subtracted: torch.Tensor


def raw_pass_maps(cams: torch.Tensor, resolved: ResolvedPass) -> torch.Tensor:
    """(C, H, W) classifier Grad-CAMs -> (K, H, W) maps in the pass's labels, zero for the
    synthesised classes."""
    source = torch.tensor(resolved.source, device=cams.device)
    raw = cams[source.clamp_min(0)]
    return raw * (source >= 0).to(raw.dtype)[:, None, None]


def adjust_pass(cams: torch.Tensor, image: torch.Tensor, resolved: ResolvedPass,
                earlier: dict[str, torch.Tensor] | None = None, sequential: bool = True,
                background_sigma: float = BACKGROUND_SIGMA) -> PassMaps:
    """Raw and adjusted maps of one image for one pass.

    Args:
        cams: (C, H, W) score-weighted Grad-CAMs of the classifier's classes at image resolution.
        image: (H, W, 3) RGB 0-255.
        resolved: the pass bound to the classifier's classes.
        earlier: class name -> (H, W) unclipped class-subtracted map of earlier passes (for
            ``other_from``); classes not there are skipped.
        sequential: class-subtraction order (see :func:`subtract_classes`).
    """
    raw = raw_pass_maps(cams, resolved)
    maps = raw.clone()
    if resolved.background is not None:
        background = background_map(image, background_sigma)
        if resolved.exceptions:
            background = background - raw[list(resolved.exceptions)].amax(0)
        maps[resolved.background] = background.clamp(0.0, 1.0)
    if resolved.other is not None:
        other = OTHER_FACTOR * (1.0 - maps.amax(0))
        extra = [earlier[name] for name in resolved.spec.other_from if earlier and name in earlier]
        if extra:
            other = torch.maximum(other, torch.stack(extra).amax(0))
        maps[resolved.other] = other.clamp(0.0, 1.0)
    subtracted = subtract_classes(maps, resolved.other, sequential)
    return PassMaps(raw=raw, adjusted=subtracted.clamp(0.0, 1.0), subtracted=subtracted)


def gradcam_labels(raw: torch.Tensor, excluded: tuple[int, ...]) -> torch.Tensor:
    """The Grad-CAM-only stage: (K, H, W) raw maps -> (H, W) int64 argmax with the ``excluded``
    labels left out (published ablation)."""
    scores = raw.clone()
    if excluded:
        scores[list(excluded)] = -math.inf
    return scores.argmax(0)
