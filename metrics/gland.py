"""GlaS 2015 object-level metrics: object F1, object Dice and object Hausdorff."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from metrics.overlap import Overlap, check_same_shape, dense_ids, overlap_of_dense

GLAND_KEYS = ("f1", "precision", "recall", "dice_obj", "hausdorff_obj")


def _best_partner(
    owner: np.ndarray, other: np.ndarray, inter: np.ndarray, n_owner: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each owner object, the overlapping object of the other set with the largest
    intersection (ties to the lowest id).

    Returns:
        ``(partner, partner_inter)``: (n_owner,) int64 partner index (-1 where nothing
        overlaps) and (n_owner,) float64 intersection area with it (px).
    """
    order = np.lexsort((other, -inter, owner))
    first = np.ones(order.size, dtype=bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    partner = np.full(n_owner, -1, dtype=np.int64)
    partner_inter = np.zeros(n_owner, dtype=np.float64)
    partner[owner[order][first]] = other[order][first]
    partner_inter[owner[order][first]] = inter[order][first]
    return partner, partner_inter


def _directed_max(from_dense: np.ndarray, n_from: int, to_dense: np.ndarray, n_to: int) -> np.ndarray:
    """(n_from, n_to) float64: for each object A of ``from`` and B of ``to``, max over A of the
    Euclidean distance (px) to the nearest pixel of B."""
    result = np.zeros((n_from, n_to), dtype=np.float64)
    index = np.arange(1, n_from + 1)
    for j in range(n_to):
        dist_to_b = ndimage.distance_transform_edt(to_dense != j + 1)
        result[:, j] = ndimage.maximum(dist_to_b, labels=from_dense, index=index)
    return result


def _object_hausdorff(true_dense: np.ndarray, n_true: int, pred_dense: np.ndarray, n_pred: int) -> np.ndarray:
    """(n_true, n_pred) symmetric Hausdorff distances (px) between every true and predicted object."""
    true_to_pred = _directed_max(true_dense, n_true, pred_dense, n_pred)
    pred_to_true = _directed_max(pred_dense, n_pred, true_dense, n_true)
    return np.maximum(true_to_pred, pred_to_true.T)


def _weighted_side(area: np.ndarray, partner: np.ndarray, inter_with: np.ndarray, partner_area: np.ndarray,
                   haus_row: np.ndarray) -> tuple[float, float]:
    """Size-weighted Dice and Hausdorff of one side given each object's partner (-1 = none)."""
    weight = area / area.sum()
    matched = partner >= 0
    dice = np.zeros(area.size)
    dice[matched] = 2.0 * inter_with[matched] / (area[matched] + partner_area[partner[matched]])
    haus = np.where(matched, haus_row[np.arange(area.size), np.maximum(partner, 0)], haus_row.min(axis=1))
    return float((weight * dice).sum()), float((weight * haus).sum())


def glas_object_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """GlaS 2015 object-level F1, object Dice and object Hausdorff of one image.

    - F1: a predicted object is a hit (TP) when it covers more than 50 % of the true object
      it overlaps most; FP = predicted objects − TP, FN = true objects − TP.
      (FullNet's ``gland_accuracy_object_level`` uses ≥ 50 %.)
    - Object Dice: ½[Σ_i γ_i Dice(G_i, S*(G_i)) + Σ_j σ_j Dice(G*(S_j), S_j)], γ/σ = object
      area / total object area of its set, partner = object of the other set with the largest
      intersection; an object with no overlapping partner scores Dice 0 (empty partner).
    - Object Hausdorff: the same weighting of symmetric Hausdorff distances (px); an object
      with no overlapping partner is paired with the object of the other set nearest in
      Hausdorff distance.

    Aggregate over images: pool TP/FP/FN for F1; average Dice and Hausdorff per image.

    Args:
        true, pred: (H, W) instance maps of glands (0 = background), equal shape.

    Returns:
        dict: ``f1, precision, recall, dice_obj, hausdorff_obj`` (floats) and ``tp, fp, fn``
        (ints). Both maps empty: all NaN. One empty: F1/precision/recall/Dice 0.0,
        Hausdorff NaN (no object to measure to).
    """
    check_same_shape(true, pred, "gland maps")
    true_dense, n_true = dense_ids(true)
    pred_dense, n_pred = dense_ids(pred)
    ov = overlap_of_dense(true_dense.ravel(), n_true, pred_dense.ravel(), n_pred)
    tp = _hits(ov)
    fp, fn = n_pred - tp, n_true - tp
    counts = {"tp": tp, "fp": fp, "fn": fn}
    if n_true == 0 and n_pred == 0:
        return {key: float("nan") for key in GLAND_KEYS} | counts
    if n_true == 0 or n_pred == 0:
        return {"f1": 0.0, "precision": 0.0, "recall": 0.0, "dice_obj": 0.0, "hausdorff_obj": float("nan")} | counts
    haus = _object_hausdorff(true_dense, n_true, pred_dense, n_pred)
    true_partner, true_inter = _best_partner(ov.pair_true, ov.pair_pred, ov.pair_inter, n_true)
    pred_partner, pred_inter = _best_partner(ov.pair_pred, ov.pair_true, ov.pair_inter, n_pred)
    dice_g, haus_g = _weighted_side(ov.true_area.astype(float), true_partner, true_inter, ov.pred_area, haus)
    dice_s, haus_s = _weighted_side(ov.pred_area.astype(float), pred_partner, pred_inter, ov.true_area, haus.T)
    return {
        "f1": 2.0 * tp / (2 * tp + fp + fn),
        "precision": tp / n_pred,
        "recall": tp / n_true,
        "dice_obj": 0.5 * (dice_g + dice_s),
        "hausdorff_obj": 0.5 * (haus_g + haus_s),
    } | counts


def _hits(ov: Overlap) -> int:
    """Predicted objects covering > 50 % of the true object they overlap most."""
    partner, inter = _best_partner(ov.pair_pred, ov.pair_true, ov.pair_inter, ov.n_pred)
    has = partner >= 0
    return int((inter[has] / ov.true_area[partner[has]] > 0.5).sum())
