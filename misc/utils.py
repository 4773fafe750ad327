"""Instance-map utilities: id remapping, bounding boxes, centroids and contours.

All functions take ``inst_map``: (H, W) integer array, 0 = background, ids > 0.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage


def remap_label(inst_map: np.ndarray) -> np.ndarray:
    """Renumber instance ids to 1..N in increasing order of the original ids.

    Args:
        inst_map: (H, W) integer or float array, 0 = background.

    Returns:
        (H, W) int32 map with contiguous ids; background stays 0.
    """
    inst_map = np.asarray(inst_map)
    ids, inverse = np.unique(inst_map, return_inverse=True)
    offset = 0 if ids.size and ids[0] == 0 else 1
    return (inverse.reshape(inst_map.shape) + offset).astype(np.int32)


def instance_ids(inst_map: np.ndarray) -> np.ndarray:
    """Sorted non-zero ids present in ``inst_map`` as a 1-D int64 array."""
    ids = np.unique(inst_map)
    return ids[ids != 0].astype(np.int64)


def bounding_boxes(inst_map: np.ndarray) -> dict[int, tuple[int, int, int, int]]:
    """Bounding box of each instance.

    Returns:
        ``{id: (rmin, cmin, rmax, cmax)}`` with ``rmax``/``cmax`` exclusive (slice ends), in pixels.
    """
    inst_map = np.asarray(inst_map)
    ids = instance_ids(inst_map)
    if ids.size == 0:
        return {}
    dense = remap_label(inst_map)
    slices = ndimage.find_objects(dense)
    return {
        int(i): (s[0].start, s[1].start, s[0].stop, s[1].stop)
        for i, s in zip(ids, slices)
        if s is not None
    }


def centroids(inst_map: np.ndarray) -> dict[int, tuple[float, float]]:
    """Centre of mass of each instance as ``{id: (x, y)}`` in pixels (x = column)."""
    inst_map = np.asarray(inst_map)
    ids = instance_ids(inst_map)
    if ids.size == 0:
        return {}
    dense = remap_label(inst_map).ravel()
    rows, cols = np.indices(inst_map.shape)
    n = int(dense.max()) + 1
    area = np.bincount(dense, minlength=n)[1:]
    cy = np.bincount(dense, weights=rows.ravel(), minlength=n)[1:] / area
    cx = np.bincount(dense, weights=cols.ravel(), minlength=n)[1:] / area
    return {int(i): (float(x), float(y)) for i, x, y in zip(ids, cx, cy)}


def contours(inst_map: np.ndarray) -> dict[int, np.ndarray]:
    """Outer contour of each instance (largest piece when it has several).

    Returns:
        ``{id: (K, 2) int32 array of (x, y) vertices}`` in image pixels.
    """
    inst_map = np.asarray(inst_map)
    result: dict[int, np.ndarray] = {}
    for inst_id, (r0, c0, r1, c1) in bounding_boxes(inst_map).items():
        r0p, c0p = max(r0 - 1, 0), max(c0 - 1, 0)
        crop = (inst_map[r0p : r1 + 1, c0p : c1 + 1] == inst_id).astype(np.uint8)
        found, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        largest = max(found, key=cv2.contourArea)
        result[inst_id] = (largest[:, 0, :] + np.array([c0p, r0p])).astype(np.int32)
    return result
