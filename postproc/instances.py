"""Per-instance information shared by every instance family, in HoVer-Net's JSON conventions.

For each instance of an ``inst_map`` ((H, W) integer, 0 = background):

- ``bbox``: ``[[rmin, cmin], [rmax, cmax]]`` in pixels, ``rmax``/``cmax`` exclusive;
- ``centroid``: ``[x, y]`` centre of mass in pixels (x = column, pixel centres at integers);
- ``contour``: ``[[x, y], ...]`` outer boundary (OpenCV ``CHAIN_APPROX_SIMPLE``), largest piece;
- ``type``: majority per-pixel type inside the instance; when the majority is background (0)
  and another type is present, the most frequent non-background type (HoVer-Net's rule);
  ties go to the lower type id. ``None`` without type information;
- ``type_prob``: fraction of the instance's pixels that have ``type``; ``None`` when untyped.

Values are plain Python lists, ints and floats, ready for ``json.dump``.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from misc.errors import UserError
from misc.utils import remap_label


def _check_inst_map(inst_map: np.ndarray) -> np.ndarray:
    """Return ``inst_map`` as a (H, W) int32/int64 array with ids >= 0, or raise."""
    inst_map = np.asarray(inst_map)
    if inst_map.ndim != 2:
        raise UserError(f"inst_map must be a (H, W) array, got shape {inst_map.shape}")
    if not np.issubdtype(inst_map.dtype, np.integer):
        raise UserError(f"inst_map must hold integer ids, got dtype {inst_map.dtype}")
    if inst_map.size and inst_map.min() < 0:
        raise UserError("inst_map must not hold negative ids (0 = background, ids > 0)")
    return inst_map


def dense_labels(inst_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A label image safe for ``bincount``/``find_objects`` and the ids it stands for.

    Args:
        inst_map: (H, W) integer array, 0 = background.

    Returns:
        ``(labels, ids)``: ``labels`` (H, W) int32 or int64 whose label ``k`` (1-based)
        is the instance ``ids[k - 1]``; labels equal ids unless the ids are so sparse
        (max id > number of pixels) that they are renumbered.
    """
    inst_map = _check_inst_map(inst_map)
    if inst_map.size == 0 or inst_map.max() == 0:
        return inst_map.astype(np.int32), np.zeros(0, np.int64)
    if inst_map.max() > inst_map.size:
        ids = np.unique(inst_map)
        ids = ids[ids != 0].astype(np.int64)
        return remap_label(inst_map), ids
    labels = inst_map if inst_map.dtype in (np.int32, np.int64) else inst_map.astype(np.int64)
    return labels, np.arange(1, int(labels.max()) + 1, dtype=np.int64)


def instance_types(
    labels: np.ndarray, type_map: np.ndarray, nr_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Majority type of every label with HoVer-Net's background rule.

    Args:
        labels: (H, W) int label image (labels 1..nr_labels; 0 = background).
        type_map: (H, W) int per-pixel type, 0 = background type.
        nr_labels: the largest label.

    Returns:
        ``(types, fractions)``: (nr_labels + 1,) int64 type and float64 fraction of the
        label's pixels with that type; index 0 (background) and absent labels hold 0.
    """
    type_map = np.asarray(type_map)
    if type_map.shape != labels.shape:
        raise UserError(f"type map shape {type_map.shape} differs from inst_map shape {labels.shape}")
    if type_map.size and type_map.min() < 0:
        raise UserError("type map must not hold negative types")
    nr_types = int(type_map.max()) + 1 if type_map.size else 1
    flat = labels.ravel().astype(np.int64) * nr_types + type_map.ravel().astype(np.int64)
    counts = np.bincount(flat, minlength=(nr_labels + 1) * nr_types).reshape(nr_labels + 1, nr_types)
    types = counts.argmax(axis=1)
    if nr_types > 1:
        foreground = counts[:, 1:].argmax(axis=1) + 1
        has_foreground = counts[np.arange(nr_labels + 1), foreground] > 0
        types = np.where((types == 0) & has_foreground, foreground, types)
    area = counts.sum(axis=1)
    fractions = counts[np.arange(nr_labels + 1), types] / np.maximum(area, 1)
    types[0], fractions[0] = 0, 0.0
    return types.astype(np.int64), fractions


def _largest_contour(mask: np.ndarray, offset_x: int, offset_y: int) -> list[list[int]]:
    """Outer contour of the largest piece of a (h, w) uint8 mask, shifted to image pixels."""
    found, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    largest = max(found, key=lambda c: (cv2.contourArea(c), len(c)))
    return (largest[:, 0, :] + np.array([offset_x, offset_y])).tolist()


def instance_info(inst_map: np.ndarray, type_prob: np.ndarray | None = None) -> dict[int, dict]:
    """Bounding box, centroid, contour and type of every instance.

    Args:
        inst_map: (H, W) integer instance map, 0 = background; ids need not be contiguous.
        type_prob: optional (H, W, T) float per-pixel class probabilities (channel 0 =
            background); each pixel's type is its arg-max.

    Returns:
        ``{id: {'bbox', 'centroid', 'contour', 'type', 'type_prob'}}`` (see module doc),
        ordered by id.
    """
    labels, ids = dense_labels(inst_map)
    if ids.size == 0:
        return {}
    if type_prob is not None:
        type_prob = np.asarray(type_prob)
        if type_prob.ndim != 3 or type_prob.shape[:2] != labels.shape:
            raise UserError(
                f"type_prob must be (H, W, T) = ({labels.shape[0]}, {labels.shape[1]}, T), got {type_prob.shape}"
            )
    nr_labels = ids.size
    flat = labels.ravel()
    area = np.bincount(flat, minlength=nr_labels + 1)
    height, width = labels.shape
    col_sum = np.bincount(flat, weights=np.tile(np.arange(width, dtype=np.float64), height), minlength=nr_labels + 1)
    row_sum = np.bincount(flat, weights=np.repeat(np.arange(height, dtype=np.float64), width), minlength=nr_labels + 1)
    if type_prob is not None:
        types, fractions = instance_types(labels, type_prob.argmax(axis=-1), nr_labels)
    slices = ndimage.find_objects(labels, max_label=nr_labels)
    info: dict[int, dict] = {}
    for label, region in enumerate(slices, start=1):
        if region is None:
            continue
        rows, cols = region
        r0, c0 = max(rows.start - 1, 0), max(cols.start - 1, 0)
        crop = (labels[r0 : rows.stop + 1, c0 : cols.stop + 1] == label).astype(np.uint8)
        typed = type_prob is not None
        info[int(ids[label - 1])] = {
            "bbox": [[rows.start, cols.start], [rows.stop, cols.stop]],
            "centroid": [col_sum[label] / area[label], row_sum[label] / area[label]],
            "contour": _largest_contour(crop, c0, r0),
            "type": int(types[label]) if typed else None,
            "type_prob": float(fractions[label]) if typed else None,
        }
    return info


def instance_type_map(inst_map: np.ndarray, inst_info: dict[int, dict]) -> np.ndarray:
    """Paint each instance with its ``type`` from ``inst_info``.

    Args:
        inst_map: (H, W) integer instance map, 0 = background.
        inst_info: :func:`instance_info` output with non-``None`` types.

    Returns:
        (H, W) int32 type map, 0 on background and on instances missing from ``inst_info``.
    """
    labels, ids = dense_labels(inst_map)
    lookup = np.zeros(ids.size + 1, np.int32)
    for label, inst_id in enumerate(ids, start=1):
        entry = inst_info.get(int(inst_id))
        if entry is not None and entry["type"] is not None:
            lookup[label] = entry["type"]
    return lookup[labels]
