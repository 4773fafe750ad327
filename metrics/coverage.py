"""CHR-Net's per-class detection F1 by pixel coverage (Gao et al., MICCAI 2021, ``Predicting.ipynb``).

A true nucleus of class c counts as correctly detected when more than half of its class-c
pixels are covered by predicted nuclei of class c. Per class, counts are pooled over images:
``total`` true nuclei, ``predicted`` nuclei, ``correct`` true nuclei; precision =
correct / predicted, recall = correct / total, F1 their harmonic mean; the overall scores pool
the counts of all classes.

Unlike the published notebook this counts nuclei without the background id (it computes
``len(np.unique(x) - 1)``, which still counts the background, so totals and predictions were
inflated by one per class and image). Unlike HoVer-Net's F1 (:func:`metrics.type_f1`), there
is no centroid pairing: overlap decides, and one prediction may cover several true nuclei.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from metrics.instance import class_instance_map
from metrics.overlap import dense_ids
from misc.errors import UserError

#: Columns of :func:`coverage_counts`.
COUNT_COLUMNS = ("total", "predicted", "correct")


def _check(true_inst: np.ndarray, true_type: np.ndarray, pred_inst: np.ndarray, pred_type: np.ndarray) -> None:
    shapes = {np.shape(a) for a in (true_inst, true_type, pred_inst, pred_type)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise UserError(f"coverage F1 needs four (H, W) maps of one shape, got true inst {np.shape(true_inst)}, "
                        f"true type {np.shape(true_type)}, pred inst {np.shape(pred_inst)}, "
                        f"pred type {np.shape(pred_type)}")


def coverage_counts(
    true_inst: np.ndarray, true_type: np.ndarray, pred_inst: np.ndarray, pred_type: np.ndarray, nr_classes: int
) -> np.ndarray:
    """Per-class counts of one image.

    Args:
        true_inst, pred_inst: (H, W) integer instance maps, 0 = background.
        true_type, pred_type: (H, W) integer class maps, 0 = background, classes 1..nr_classes.
        nr_classes: number of nucleus classes (background excluded).

    Returns:
        (nr_classes, 3) int64: row c-1 = ``[total, predicted, correct]`` of class c, where a
        true nucleus restricted to its class-c pixels is correct when more than half of those
        pixels lie on predicted nuclei restricted to their class-c pixels.
    """
    _check(true_inst, true_type, pred_inst, pred_type)
    counts = np.zeros((nr_classes, 3), np.int64)
    for c in range(1, nr_classes + 1):
        true_c, n_true = dense_ids(class_instance_map(true_inst, true_type, c))
        _, n_pred = dense_ids(class_instance_map(pred_inst, pred_type, c))
        covered = (class_instance_map(pred_inst, pred_type, c) != 0).ravel()
        area = np.bincount(true_c.ravel(), minlength=n_true + 1)
        hit = np.bincount(true_c.ravel(), weights=covered, minlength=n_true + 1)
        correct = int((hit[1:] > 0.5 * area[1:]).sum())
        counts[c - 1] = (n_true, n_pred, correct)
    return counts


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def coverage_f1(counts: np.ndarray | Iterable[np.ndarray]) -> dict:
    """Pooled precision, recall and F1, overall and per class.

    Args:
        counts: one (nr_classes, 3) array of :func:`coverage_counts` per image, or their sum.

    Returns:
        ``precision``, ``recall``, ``f1`` (floats) over all classes, and ``precision_type``,
        ``recall_type``, ``f1_type`` ((nr_classes,) float64). F1 = 2 correct / (total +
        predicted) (the harmonic mean of precision and recall, 0 when nothing is correct); NaN
        where a denominator is 0.
    """
    stacked = np.asarray(counts if isinstance(counts, np.ndarray) else list(counts), dtype=np.int64)
    if stacked.size == 0:
        raise UserError("coverage F1 needs the counts of at least one image")
    pooled = stacked.reshape(-1, *stacked.shape[-2:]).sum(0) if stacked.ndim == 3 else stacked
    if pooled.ndim != 2 or pooled.shape[1] != 3:
        raise UserError(f"coverage counts must be (nr_classes, 3) per image, got {stacked.shape}")
    total, predicted, correct = pooled.T
    overall = pooled.sum(0)
    return {
        "precision": float(_ratio(overall[2], overall[1])),
        "recall": float(_ratio(overall[2], overall[0])),
        "f1": float(_ratio(2 * overall[2], overall[0] + overall[1])),
        "precision_type": _ratio(correct, predicted),
        "recall_type": _ratio(correct, total),
        "f1_type": _ratio(2 * correct, total + predicted),
    }
