"""FullNet weight maps (the published ``weight_map.m``, U-Net style, without a class term).

``w(x) = 1 + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))`` for every pixel, object interiors
included, where d1 and d2 are the Euclidean distances from x to the 1-pixel boundaries of the
nearest and second-nearest objects. A boundary pixel of an object is one of its pixels with an
8-neighbour outside the object (another object, background, or beyond the image border).
With fewer than two objects w = 1 everywhere.

Each object's distance transform runs only in its bounding box grown by the cut-off ``R`` at
which ``w0 * exp(-R^2 / (2 sigma^2))`` falls below ``tolerance``: outside that box the object is
farther than ``R``, so leaving it out changes w by less than ``tolerance``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from misc.errors import UserError

EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


def object_boundaries(inst_map: np.ndarray) -> np.ndarray:
    """Boundary pixels of every object, labelled with the object's id.

    Args:
        inst_map: (H, W) integer instance map, 0 = background.

    Returns:
        (H, W) int32: the id at pixels of an object that have an 8-neighbour outside that
        object (pixels beyond the image border count as outside), 0 elsewhere.
    """
    padded = np.pad(inst_map.astype(np.int32, copy=False), 1, constant_values=0)
    same_max = ndimage.maximum_filter(padded, footprint=EIGHT_NEIGHBOURS, mode="constant", cval=0)
    same_min = ndimage.minimum_filter(padded, footprint=EIGHT_NEIGHBOURS, mode="constant", cval=0)
    edge = (same_max != padded) | (same_min != padded)
    return np.where(edge & (padded > 0), padded, 0)[1:-1, 1:-1]


def cutoff_distance(w0: float, sigma: float, tolerance: float) -> float:
    """Distance R (pixels) with ``w0 * exp(-R^2 / (2 sigma^2)) == tolerance``; 0 when w0 <= tolerance."""
    if w0 <= tolerance:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(w0 / tolerance))


def two_nearest_boundary_distances(inst_map: np.ndarray, max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Distances from every pixel to the boundaries of its nearest and second-nearest objects.

    Args:
        inst_map: (H, W) integer instance map, 0 = background.
        max_distance: objects are considered only within their bounding box grown by
            ``ceil(max_distance)`` pixels; distances above ``max_distance`` may read as inf.

    Returns:
        ``(d1, d2)``, each (H, W) float64 in pixels, ``d1 <= d2``; inf where fewer objects
        are within reach.
    """
    boundary = object_boundaries(inst_map)
    height, width = inst_map.shape
    d1 = np.full((height, width), np.inf)
    d2 = np.full((height, width), np.inf)
    reach = int(math.ceil(max_distance))
    for index, box in enumerate(ndimage.find_objects(boundary), start=1):
        if box is None:
            continue
        rows = slice(max(box[0].start - reach, 0), min(box[0].stop + reach, height))
        cols = slice(max(box[1].start - reach, 0), min(box[1].stop + reach, width))
        distance = ndimage.distance_transform_edt(boundary[rows, cols] != index)
        near, second = d1[rows, cols], d2[rows, cols]
        second[...] = np.minimum(second, np.maximum(near, distance))
        near[...] = np.minimum(near, distance)
    return d1, d2


def weight_map(inst_map: np.ndarray, w0: float = 10.0, sigma: float = 5.0, tolerance: float = 1e-8) -> np.ndarray:
    """The FullNet / U-Net separation weight of every pixel.

    Args:
        inst_map: (H, W) integer instance map, 0 = background.
        w0: peak extra weight (published 10).
        sigma: spread in pixels (published 5 for nuclei, 20 for glands).
        tolerance: largest absolute error allowed by the distance cut-off.

    Returns:
        (H, W) float32 weights in [1, 1 + w0]; all ones when fewer than two objects.

    Raises:
        UserError: ``inst_map`` is not 2-D integers, or ``sigma`` / ``w0`` out of range.
    """
    inst_map = np.asarray(inst_map)
    if inst_map.ndim != 2 or inst_map.dtype.kind not in "iu":
        raise UserError(f"weight map: inst_map is {inst_map.shape} {inst_map.dtype}; expected (H, W) integers")
    if sigma <= 0 or w0 < 0:
        raise UserError(f"weight map: need sigma > 0 and w0 >= 0, got sigma {sigma}, w0 {w0}")
    out = np.ones(inst_map.shape, dtype=np.float32)
    ids = np.unique(inst_map)
    if np.count_nonzero(ids > 0) < 2:
        return out
    if ids[-1] > 10 * ids.size + 1000:  # sparse large ids: renumber so find_objects stays small
        inst_map = np.searchsorted(ids[ids > 0], inst_map) + (inst_map > 0)
    d1, d2 = two_nearest_boundary_distances(inst_map, cutoff_distance(w0, sigma, tolerance))
    reached = np.isfinite(d2)
    total = d1[reached] + d2[reached]
    out[reached] = 1.0 + w0 * np.exp(-(total * total) / (2.0 * sigma * sigma))
    return out
