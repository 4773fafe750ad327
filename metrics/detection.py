"""HoVer-Net nucleus detection and classification F1 (``compute_stats.run_nuclei_type_stat``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from misc.errors import UserError


def pair_centroids(true_cents: np.ndarray, pred_cents: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """HoVer-Net ``pair_coordinates``: Hungarian on Euclidean distance, pairs kept within ``radius``.

    The assignment is solved on the full distance matrix first and pairs farther than
    ``radius`` px are dropped afterwards, as the published code does.

    Args:
        true_cents: (N, 2) and pred_cents: (M, 2) float coordinates (x, y) in pixels.

    Returns:
        ``(true_idx, pred_idx)``: (P,) int64 indices of the paired points.
    """
    if len(true_cents) == 0 or len(pred_cents) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    dist = cdist(true_cents, pred_cents)
    rows, cols = linear_sum_assignment(dist)
    keep = dist[rows, cols] <= radius
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


def _as_points(cents: np.ndarray, types: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    cents = np.asarray(cents, dtype=np.float64)
    if cents.size == 0:
        cents = cents.reshape(0, 2)
    types = np.asarray(types).reshape(-1).astype(np.int64)
    if cents.ndim != 2 or cents.shape[1] != 2 or cents.shape[0] != types.shape[0]:
        raise UserError(f"{where}: centroids must be (N, 2) with N types; got {cents.shape} and {types.shape}")
    return cents, types


def type_f1(
    true_cents: Sequence[np.ndarray],
    true_types: Sequence[np.ndarray],
    pred_cents: Sequence[np.ndarray],
    pred_types: Sequence[np.ndarray],
    nr_types: int,
    radius: float = 12,
) -> dict:
    """Detection F1, type accuracy and per-type F1, pooled over the data set (HoVer-Net).

    Centroids are paired per image (:func:`pair_centroids`), then counts are pooled:

    - ``f1_d`` = 2·TP / (2·TP + FP + FN) on detection;
    - ``acc`` = fraction of paired nuclei whose types agree;
    - ``f1_type[c-1]`` for c in 1..nr_types, over paired nuclei of type c in truth or
      prediction: 2(TPc+TNc) / (2(TPc+TNc) + 2FPc + 2FNc + FPd,c + FNd,c), FPd,c / FNd,c
      being the unpaired predictions / true nuclei of type c.

    NaN where a denominator is 0. Differences from the published script: it truncates
    centroids to int32 and inserts a dummy (0, 0) point of type 0 into an image without
    nuclei; here centroids are used as given and empty images add only FN/FP.

    Args:
        true_cents, pred_cents: per image, (N, 2) centroid arrays (x, y) in pixels.
        true_types, pred_types: per image, (N,) integer types (1..nr_types).
        nr_types: number of nucleus types, background excluded.
        radius: pairing distance in pixels (12 at 40x).

    Returns:
        dict: ``f1_d``, ``acc`` (floats), ``f1_type`` ((nr_types,) float64), pooled
        ``tp_d``, ``fp_d``, ``fn_d`` (ints).
    """
    if not (len(true_cents) == len(true_types) == len(pred_cents) == len(pred_types)):
        raise UserError(
            "true_cents, true_types, pred_cents and pred_types must hold one entry per image; got lengths "
            f"{len(true_cents)}, {len(true_types)}, {len(pred_cents)}, {len(pred_types)}"
        )
    paired_true, paired_pred, unpaired_true, unpaired_pred = [], [], [], []
    for i, (tc, tt, pc, pt) in enumerate(zip(true_cents, true_types, pred_cents, pred_types)):
        tc, tt = _as_points(tc, tt, f"image {i} truth")
        pc, pt = _as_points(pc, pt, f"image {i} prediction")
        ti, pi = pair_centroids(tc, pc, radius)
        paired_true.append(tt[ti])
        paired_pred.append(pt[pi])
        unpaired_true.append(np.delete(tt, ti))
        unpaired_pred.append(np.delete(pt, pi))
    pt_all = np.concatenate(paired_true) if paired_true else np.zeros(0, np.int64)
    pp_all = np.concatenate(paired_pred) if paired_pred else np.zeros(0, np.int64)
    ut_all = np.concatenate(unpaired_true) if unpaired_true else np.zeros(0, np.int64)
    up_all = np.concatenate(unpaired_pred) if unpaired_pred else np.zeros(0, np.int64)
    tp_d, fp_d, fn_d = pt_all.size, up_all.size, ut_all.size
    f1_d = _ratio(2 * tp_d, 2 * tp_d + fp_d + fn_d)
    acc = _ratio(int((pt_all == pp_all).sum()), pt_all.size)
    f1_type = np.array([_type_f1(pt_all, pp_all, ut_all, up_all, c) for c in range(1, nr_types + 1)])
    return {"f1_d": f1_d, "acc": acc, "f1_type": f1_type, "tp_d": tp_d, "fp_d": fp_d, "fn_d": fn_d}


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def _type_f1(
    paired_true: np.ndarray, paired_pred: np.ndarray, unpaired_true: np.ndarray, unpaired_pred: np.ndarray, c: int
) -> float:
    """HoVer-Net ``_f1_type`` with weights [2, 2, 1, 1]."""
    involved = (paired_true == c) | (paired_pred == c)
    t, p = paired_true[involved] == c, paired_pred[involved] == c
    tp_tn = int((t & p).sum() + (~t & ~p).sum())
    fp_dt = int((~t & p).sum())
    fn_dt = int((t & ~p).sum())
    fp_d = int((unpaired_pred == c).sum())
    fn_d = int((unpaired_true == c).sum())
    return _ratio(2 * tp_tn, 2 * tp_tn + 2 * fp_dt + 2 * fn_dt + fp_d + fn_d)
