"""Vectorised instance overlap: dense ids, areas and the sparse (true, pred) intersection table.

Everything here works on whole arrays: one relabelling pass per map and one joint
``bincount`` (or ``np.unique`` over joint codes when a dense table would be too big).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from misc.errors import UserError

# Largest dense joint table (cells) built with bincount; above it np.unique over codes is used.
_DENSE_TABLE_CELLS = 1 << 23


def dense_ids(inst_map: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber an instance map to 0..N keeping the order of the original ids.

    Args:
        inst_map: (H, W) array of any integer or float dtype; 0 = background, any other
            value (non-contiguous, huge or negative) is an instance id.

    Returns:
        ``(dense, n)``: (H, W) int64 map with ids 1..n (0 stays background) and the count n.
    """
    inst_map = np.asarray(inst_map)
    if inst_map.dtype.kind in "ub" or (
        inst_map.dtype.kind == "i" and (inst_map.size == 0 or inst_map.min() >= 0)
    ):
        top = int(inst_map.max()) if inst_map.size else 0
        if top <= 4 * inst_map.size + 1024:
            flat = inst_map.ravel().astype(np.int64, copy=False)
            present = np.bincount(flat, minlength=top + 1) > 0
            present[0] = False
            lut = np.cumsum(present, dtype=np.int64)
            lut[0] = 0
            return lut[flat].reshape(inst_map.shape), int(lut[-1])
    ids, inverse = np.unique(inst_map, return_inverse=True)
    has_zero = bool(np.any(ids == 0))
    zero_pos = int(np.searchsorted(ids, 0)) if has_zero else -1
    inverse = inverse.reshape(inst_map.shape).astype(np.int64)
    if has_zero:
        # ids below zero keep their order before the positive ones; zero maps to background
        dense = np.where(inverse < zero_pos, inverse + 1, inverse)
        dense[inverse == zero_pos] = 0
        return dense, int(ids.size - 1)
    return inverse + 1, int(ids.size)


@dataclass(frozen=True)
class Overlap:
    """Areas and pairwise intersections of two dense instance maps.

    Attributes:
        n_true, n_pred: instance counts.
        true_area: (n_true,) int64 pixel areas of true ids 1..n_true (index id - 1).
        pred_area: (n_pred,) int64 pixel areas of pred ids 1..n_pred.
        pair_true, pair_pred: (K,) int64 zero-based indices of every overlapping pair.
        pair_inter: (K,) int64 intersection areas (pixels) of those pairs, all > 0.
    """

    n_true: int
    n_pred: int
    true_area: np.ndarray
    pred_area: np.ndarray
    pair_true: np.ndarray
    pair_pred: np.ndarray
    pair_inter: np.ndarray

    @property
    def pair_union(self) -> np.ndarray:
        """(K,) int64 union areas of the overlapping pairs."""
        return self.true_area[self.pair_true] + self.pred_area[self.pair_pred] - self.pair_inter

    @property
    def pair_iou(self) -> np.ndarray:
        """(K,) float64 IoU of the overlapping pairs."""
        return self.pair_inter / self.pair_union

    def iou_matrix(self) -> np.ndarray:
        """Dense (n_true, n_pred) float64 IoU matrix (zeros where instances do not touch)."""
        dense = np.zeros((self.n_true, self.n_pred), dtype=np.float64)
        dense[self.pair_true, self.pair_pred] = self.pair_iou
        return dense


def check_same_shape(true_map: np.ndarray, pred_map: np.ndarray, what: str = "maps") -> None:
    """Raise :class:`UserError` unless the two maps are 2-D and of the same shape."""
    if np.ndim(true_map) != 2 or np.shape(true_map) != np.shape(pred_map):
        raise UserError(
            f"true and pred {what} must be (H, W) arrays of the same shape; "
            f"got {np.shape(true_map)} and {np.shape(pred_map)}"
        )


def overlap_table(true_inst: np.ndarray, pred_inst: np.ndarray) -> Overlap:
    """Build the :class:`Overlap` of two instance maps (ids are renumbered first).

    Args:
        true_inst, pred_inst: (H, W) instance maps of any integer or float dtype.
    """
    check_same_shape(true_inst, pred_inst, "instance maps")
    true_dense, n_true = dense_ids(true_inst)
    pred_dense, n_pred = dense_ids(pred_inst)
    return overlap_of_dense(true_dense.ravel(), n_true, pred_dense.ravel(), n_pred)


def overlap_of_dense(true_flat: np.ndarray, n_true: int, pred_flat: np.ndarray, n_pred: int) -> Overlap:
    """:class:`Overlap` of two flattened dense maps (ids 0..n, int64)."""
    true_area = np.bincount(true_flat, minlength=n_true + 1)[1:]
    pred_area = np.bincount(pred_flat, minlength=n_pred + 1)[1:]
    both = (true_flat > 0) & (pred_flat > 0)
    stride = n_pred + 1
    codes = true_flat[both] * stride + pred_flat[both]
    if (n_true + 1) * stride <= _DENSE_TABLE_CELLS:
        counts = np.bincount(codes, minlength=(n_true + 1) * stride)
        pair_codes = np.flatnonzero(counts)
        pair_inter = counts[pair_codes]
    else:
        pair_codes, pair_inter = np.unique(codes, return_counts=True)
    return Overlap(
        n_true=n_true,
        n_pred=n_pred,
        true_area=true_area.astype(np.int64),
        pred_area=pred_area.astype(np.int64),
        pair_true=(pair_codes // stride - 1).astype(np.int64),
        pair_pred=(pair_codes % stride - 1).astype(np.int64),
        pair_inter=pair_inter.astype(np.int64),
    )
