"""CHR-Net post-processing (published ``process_instance_hcnet`` -> ``gaussianmap2binary``).

From the stitched foreground probability and marker map, in 0-255 units as published:

1. :func:`binary_mask`: ``uint8(p * 255) > 40``;
2. :func:`inverted_marker`: ``255 - uint8(marker * 255)``;
3. :func:`h_reconstruction`: reconstruction by erosion of ``min(255, inv + h)`` over ``inv``
   (h = 150): the inverted marker with every minimum shallower than h filled;
4. :func:`regional_minima`: the regional minima of that map (``reconstruct(., h=1) - .``
   > 0) inside the mask, 8-connected components labelled -> markers;
5. ``watershed(inv, markers, mask)`` (the un-reconstructed inverted marker);
6. :func:`clear_watershed_lines`: the 3x3 "gradient" where two labels meet is set to 0;
7. :func:`remove_small`: objects of ``min_area`` (10) pixels or fewer go; ids renumbered 1..N.

Types: each pixel's type is the arg-max over the foreground type channels (background channel
ignored), each instance takes the majority type of its pixels (:func:`instance_types`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np
from skimage.measure import label
from skimage.morphology import dilation, erosion, reconstruction
from skimage.segmentation import watershed

from misc.errors import UserError
from misc.utils import remap_label


@dataclass(frozen=True)
class CHRNetPostprocParams:
    """Published constants (``gaussianmap2binary(marker*255, prob*255, 150, 40)``).

    Attributes:
        prob_threshold: foreground where ``uint8(p * 255)`` exceeds it (0-255 units; 40).
        h: depth (0-255 marker units) below which minima of the inverted marker merge (150).
        min_area: objects of this many pixels or fewer are removed (10).
    """

    prob_threshold: int = 40
    h: int = 150
    min_area: int = 10

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "CHRNetPostprocParams":
        """From a ``postproc`` config mapping; unknown keys are an error naming the valid ones."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise UserError(f"postproc: unknown CHR-Net option(s) {unknown}; expected {names}")
        values = {k: int(v) for k, v in options.items()}
        if not 0 <= values.get("prob_threshold", 40) < 255 or not 0 < values.get("h", 150) <= 255:
            raise UserError(f"postproc: prob_threshold must be in [0, 255) and h in (0, 255], got {values}")
        return cls(**values)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """``uint8(values * 255)`` of a [0, 1] map (truncation, as ``ndarray.astype('uint8')``)."""
    return (np.clip(np.asarray(values, np.float64), 0.0, 1.0) * 255).astype(np.uint8)


def binary_mask(np_prob: np.ndarray, threshold: int = 40) -> np.ndarray:
    """(H, W) bool foreground: ``uint8(np_prob * 255) > threshold``; np_prob (H, W) float in [0, 1]."""
    return to_uint8(np_prob) > threshold


def inverted_marker(marker: np.ndarray) -> np.ndarray:
    """(H, W) uint8 ``255 - uint8(marker * 255)``: nucleus centres become minima."""
    return 255 - to_uint8(marker)


def h_reconstruction(image: np.ndarray, h: int) -> np.ndarray:
    """H-minima reconstruction: reconstruction by erosion of ``min(255, image + h)`` over
    ``image``; (H, W) uint8 -> (H, W) uint8."""
    image = np.asarray(image, np.uint8)
    seed = np.minimum(image.astype(np.int64) + int(h), 255)
    return reconstruction(seed.astype(np.float64), image.astype(np.float64), method="erosion").astype(np.uint8)


def regional_minima(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W) int32 markers: 8-connected regional minima of uint8 ``image`` inside ``mask``,
    labelled 1..M (``h_reconstruction(image, 1) - image > 0``)."""
    image = np.asarray(image, np.uint8)
    minima = (h_reconstruction(image, 1) - image) > 0
    minima &= np.asarray(mask, bool)
    return label(minima, connectivity=2).astype(np.int32)


def watershed_lines(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: object pixels whose 3x3 window holds another object (published
    ``generate_wsl``: 3x3 dilation minus 3x3 erosion with background counted as the largest
    id + 1, so contact with background draws no line)."""
    labels = np.asarray(labels, np.int64)
    footprint = np.ones((3, 3), bool)
    eroded = erosion(np.where(labels == 0, labels.max(initial=0) + 1, labels), footprint)
    eroded[labels == 0] = 0
    return (dilation(labels, footprint) - eroded > 0) & (labels > 0)


def clear_watershed_lines(labels: np.ndarray) -> np.ndarray:
    """``labels`` with :func:`watershed_lines` set to 0 (separates touching objects)."""
    return np.where(watershed_lines(labels), 0, labels)


def remove_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Remove objects of ``min_area`` pixels or fewer; (H, W) int32 with ids renumbered 1..N."""
    labels = np.asarray(labels, np.int64)
    area = np.bincount(labels.ravel())
    keep = area > min_area
    keep[0] = False
    return remap_label(np.where(keep[labels], labels, 0)).astype(np.int32)


def instances_from_marker(np_prob: np.ndarray, marker: np.ndarray, params: CHRNetPostprocParams) -> np.ndarray:
    """The instance map of steps 1-7 (module docstring).

    Args:
        np_prob: (H, W) float foreground probability in [0, 1].
        marker: (H, W) float marker map in [0, 1] (sigmoid output).

    Returns:
        (H, W) int32 instance ids 1..N, 0 = background.
    """
    np_prob, marker = np.squeeze(np.asarray(np_prob)), np.squeeze(np.asarray(marker))
    if np_prob.ndim != 2 or np_prob.shape != marker.shape:
        raise UserError(f"CHR-Net post-processing needs (H, W) np_prob and marker maps, got {np_prob.shape} "
                        f"and {marker.shape}")
    mask = binary_mask(np_prob, params.prob_threshold)
    inverted = inverted_marker(marker)
    markers = regional_minima(h_reconstruction(inverted, params.h), mask)
    labels = watershed(inverted, markers, mask=mask)
    labels = label(labels, background=0, connectivity=2)
    return remove_small(clear_watershed_lines(labels), params.min_area)


def foreground_type_prob(type_prob: np.ndarray) -> np.ndarray:
    """(H, W, T) probabilities with the background channel set to -1, so that an arg-max
    picks among the foreground types only (published ``argmax(pred[..., 1:]) + 1``)."""
    type_prob = np.array(type_prob, np.float32, copy=True)
    if type_prob.ndim != 3 or type_prob.shape[-1] < 2:
        raise UserError(f"tp_prob must be (H, W, T) with T >= 2, got {type_prob.shape}")
    type_prob[..., 0] = -1.0
    return type_prob
