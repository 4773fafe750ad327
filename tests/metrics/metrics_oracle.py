"""Straightforward loop-based ports of the published metric code, used only as test oracles.

Written after HoVer-Net ``metrics/stats_utils.py`` (get_fast_aji, get_fast_aji_plus,
get_fast_pq, get_fast_dice_2, get_dice_1) and FullNet's ``gland_accuracy_object_level``,
with the inputs renumbered to 1..N first. Slow on purpose: one mask per instance.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import directed_hausdorff

from misc.utils import remap_label


def _pairwise(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, list, list]:
    true_ids = [i for i in np.unique(true) if i != 0]
    pred_ids = [i for i in np.unique(pred) if i != 0]
    inter = np.zeros((len(true_ids), len(pred_ids)))
    union = np.zeros((len(true_ids), len(pred_ids)))
    for a, t in enumerate(true_ids):
        t_mask = true == t
        for b, p in enumerate(pred_ids):
            p_mask = pred == p
            i = np.logical_and(t_mask, p_mask).sum()
            if i:
                inter[a, b] = i
                union[a, b] = np.logical_or(t_mask, p_mask).sum()
    return inter, union, true_ids, pred_ids


def oracle_stats(true: np.ndarray, pred: np.ndarray, match_iou: float = 0.5) -> dict[str, float]:
    """All seven metrics the slow way (published formulas, 1e-6 guards included)."""
    true = remap_label(true)
    pred = remap_label(pred)
    inter, union, true_ids, pred_ids = _pairwise(true, pred)
    true_area = np.array([(true == t).sum() for t in true_ids])
    pred_area = np.array([(pred == p).sum() for p in pred_ids])
    iou = inter / (union + 1.0e-6)

    dice = 2.0 * np.logical_and(true > 0, pred > 0).sum() / ((true > 0).sum() + (pred > 0).sum())
    total, overall = 0.0, 0.0
    for a in range(len(true_ids)):
        for b in range(len(pred_ids)):
            if inter[a, b] > 0:
                overall += inter[a, b]
                total += true_area[a] + pred_area[b]
    dice2 = 2 * overall / total

    def aji_of(paired_true, paired_pred):
        c = inter[paired_true, paired_pred].sum()
        u = union[paired_true, paired_pred].sum()
        u += sum(true_area[a] for a in range(len(true_ids)) if a not in list(paired_true))
        u += sum(pred_area[b] for b in range(len(pred_ids)) if b not in list(paired_pred))
        return c / u

    best = np.argmax(iou, axis=1)
    keep = np.nonzero(iou.max(axis=1) > 0)[0]
    aji = aji_of(keep, best[keep])
    rows, cols = linear_sum_assignment(-iou)
    ok = iou[rows, cols] > 0
    aji_plus = aji_of(rows[ok], cols[ok])

    exact_iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    if match_iou >= 0.5:
        pt, pp = np.nonzero(exact_iou > match_iou)
    else:
        pt, pp = linear_sum_assignment(-exact_iou)
        good = exact_iou[pt, pp] > match_iou
        pt, pp = pt[good], pp[good]
    tp = len(pt)
    fp, fn = len(pred_ids) - tp, len(true_ids) - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = exact_iou[pt, pp].sum() / (tp + 1.0e-6)
    return {"dice": dice, "dice2": dice2, "aji": aji, "aji_plus": aji_plus, "dq": dq, "sq": sq, "pq": dq * sq}


def _hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = np.argwhere(a), np.argwhere(b)
    return max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0])


def oracle_glas(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """FullNet-style GlaS object metrics on instance maps (hit rule: > 50 % of the true object)."""
    true_ids = [i for i in np.unique(true) if i != 0]
    pred_ids = [i for i in np.unique(pred) if i != 0]
    tp = 0
    for p in pred_ids:
        p_mask = pred == p
        overlaps = [(np.logical_and(p_mask, true == t).sum(), t) for t in true_ids]
        best_area, best = max(overlaps, key=lambda x: (x[0], -x[1]))
        if best_area and best_area / (true == best).sum() > 0.5:
            tp += 1
    fp, fn = len(pred_ids) - tp, len(true_ids) - tp

    def side(own_ids, own, other_ids, other):
        total = (own > 0).sum()
        dice_sum = haus_sum = 0.0
        for i in own_ids:
            mask = own == i
            gamma = mask.sum() / total
            overlaps = [(np.logical_and(mask, other == j).sum(), j) for j in other_ids]
            best_area, best = max(overlaps, key=lambda x: (x[0], -x[1]))
            if best_area == 0:
                haus = min(_hausdorff(mask, other == j) for j in other_ids)
                dice = 0.0
            else:
                partner = other == best
                dice = 2 * best_area / (mask.sum() + partner.sum())
                haus = _hausdorff(mask, partner)
            dice_sum += gamma * dice
            haus_sum += gamma * haus
        return dice_sum, haus_sum

    dg, hg = side(true_ids, true, pred_ids, pred)
    ds, hs = side(pred_ids, pred, true_ids, true)
    return {"f1": 2 * tp / (2 * tp + fp + fn), "dice_obj": (dg + ds) / 2, "hausdorff_obj": (hg + hs) / 2}


def random_instance_map(rng: np.random.Generator, shape: tuple[int, int] = (24, 24), n: int = 8) -> np.ndarray:
    """Small random instance map: ``n`` rectangles painted in order (later ones on top)."""
    out = np.zeros(shape, dtype=np.int32)
    for k in range(1, n + 1):
        r, c = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
        h, w = rng.integers(2, 9), rng.integers(2, 9)
        out[r : r + h, c : c + w] = k
    return out
