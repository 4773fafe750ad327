"""FullNet training targets: ternary labels, varCE instance ids and weight maps.

The published pipeline (SEEDS 3.3) in two steps, matching the shared Dataset's hooks:

1. :meth:`FullNetTargets.precompute`, on the un-augmented sample (cached by the Dataset):
   ``inside`` = union of each instance eroded by a 3x3 cross (``create_ternary_labels``),
   the weight map of the instance map (``weight_map.m``), and, when configured, the
   Reinhard-normalised image (whole-image statistics, as published). The Dataset's
   geometric augmentations then move ``inside`` and ``weight_map`` with the image
   (nearest sampling, 0 outside the image, so padded pixels get weight 0 as published).
2. :meth:`FullNetTargets.__call__`, on the augmented sample (``LabelEncoding``): class 1
   where ``inside``, class 2 = dilation(inside, 3x3 cross) & ~erosion(inside, disk(radius)),
   and the varCE instance ids = 8-connected components of class 1.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.morphology import disk

from loader.colour import reinhard_normalise
from misc.errors import UserError
from models.fullnet.weights import weight_map

CROSS = ndimage.generate_binary_structure(2, 1)
BACKGROUND, INSIDE, CONTOUR = 0, 1, 2


def inside_mask(inst_map: np.ndarray) -> np.ndarray:
    """Union of every instance eroded by a 3x3 cross.

    A pixel stays when its 4 neighbours carry its own id; the image border is replicated
    (as skimage's erosion of each instance mask), so it erodes nothing.

    Args:
        inst_map: (H, W) integer instance map, 0 = background.

    Returns:
        (H, W) uint8, 1 = inside, 0 elsewhere.
    """
    padded = np.pad(inst_map, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    same = (
        (padded[:-2, 1:-1] == centre) & (padded[2:, 1:-1] == centre)
        & (padded[1:-1, :-2] == centre) & (padded[1:-1, 2:] == centre)
    )
    return (same & (centre > 0)).astype(np.uint8)


def ternary_label(inside: np.ndarray, radius: int) -> np.ndarray:
    """The published ``LabelEncoding``: background 0, inside 1, contour 2.

    contour = dilation(inside, 3x3 cross) & ~erosion(inside, disk(radius)); images edges
    are reflected (skimage's default), so no contour is drawn along them.

    Args:
        inside: (H, W) array, non-zero = inside.
        radius: contour band radius in pixels (1 nuclei, 2 glands).

    Returns:
        (H, W) uint8 class map.
    """
    inside = (np.asarray(inside) > 0).astype(np.uint8)
    dilated = ndimage.grey_dilation(inside, footprint=CROSS, mode="reflect")
    eroded = ndimage.grey_erosion(inside, footprint=disk(int(radius)).astype(bool), mode="reflect")
    label = inside.copy()
    label[(dilated > 0) & (eroded == 0)] = CONTOUR
    return label


def inside_instances(label: np.ndarray) -> np.ndarray:
    """varCE instance ids: 8-connected components of the inside class.

    Args:
        label: (H, W) ternary class map.

    Returns:
        (H, W) int32, ids 1..K, 0 outside the inside class.
    """
    return connected_components(np.asarray(label) == INSIDE, connectivity=2).astype(np.int32)


class FullNetTargets:
    """Picklable target builder for :class:`loader.datasets.SampleDataset`.

    Args:
        radius: contour band radius of :func:`ternary_label`.
        use_weight_map: False gives weight 1 everywhere (the published ablation).
        w0, sigma: weight-map constants (see :func:`models.fullnet.weights.weight_map`).
        reinhard: ``{'mean': [L, a, b], 'std': [L, a, b]}`` CIELAB target of Reinhard colour
            normalisation applied to the whole un-augmented image, or None.

    The output of ``__call__``: ``image`` (H, W, 3) uint8, ``label`` (H, W) int64 classes,
    ``weight_map`` (H, W) float32 and ``instances`` (H, W) int32 varCE ids.
    """

    def __init__(self, radius: int = 1, use_weight_map: bool = True, w0: float = 10.0, sigma: float = 5.0,
                 reinhard: Mapping[str, Any] | None = None) -> None:
        if int(radius) < 0:
            raise UserError(f"targets.radius must be >= 0, got {radius}")
        self.radius = int(radius)
        self.use_weight_map = bool(use_weight_map)
        self.w0 = float(w0)
        self.sigma = float(sigma)
        self.reinhard = None if reinhard is None else {k: [float(v) for v in reinhard[k]] for k in ("mean", "std")}

    @property
    def cache_key(self) -> str:
        """Names every option that changes :meth:`precompute` (the Dataset's cache folder)."""
        weights = f"w0={self.w0:g}_sigma={self.sigma:g}" if self.use_weight_map else "noweights"
        colour = "raw" if self.reinhard is None else "reinhard=" + "_".join(
            f"{v:.4g}" for v in self.reinhard["mean"] + self.reinhard["std"])
        return f"fullnet_{weights}_{colour}"

    def precompute(self, sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Maps computed before augmentation: ``inside`` (H, W) uint8, ``weight_map`` (H, W)
        float32 and, with Reinhard normalisation, the normalised ``image`` (H, W, 3) uint8."""
        inst_map = np.asarray(sample["inst_map"])
        maps = {"inside": inside_mask(inst_map)}
        if self.use_weight_map:
            maps["weight_map"] = weight_map(inst_map, self.w0, self.sigma)
        else:
            maps["weight_map"] = np.ones(inst_map.shape, np.float32)
        if self.reinhard is not None:
            maps["image"] = reinhard_normalise(np.asarray(sample["image"]), self.reinhard)
        return maps

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Targets of one augmented sample (runs :meth:`precompute` itself when the Dataset did not)."""
        if "inside" not in sample:
            sample = {**sample, **self.precompute(sample)}
        label = ternary_label(sample["inside"], self.radius)
        return {
            "image": np.ascontiguousarray(sample["image"]),
            "label": label.astype(np.int64),
            "weight_map": np.asarray(sample["weight_map"], dtype=np.float32),
            "instances": inside_instances(label),
        }
