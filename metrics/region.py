"""Binary region scores per image (tumour-region segmentation of whole slides, H2G-Net's protocol).

H2G-Net scores each slide on the refinement grid and averages the slides' scores:
DSC = 2 TP / (2 TP + FP + FN), precision = TP / (TP + FP), recall = TP / (TP + FN), pixel counts
of one slide; a score whose denominator is 0 is NaN (left out of the mean, and counted, by
:func:`metrics.mean_rows`).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from metrics.aggregate import mean_rows
from misc.errors import UserError

REGION_KEYS = ("dsc", "precision", "recall")


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def region_scores(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """DSC, precision and recall of one binary prediction.

    Args:
        true, pred: (H, W) masks of the same shape; non-zero = foreground.

    Returns:
        ``{'dsc', 'precision', 'recall'}`` floats (NaN where undefined: no foreground on
        either side for DSC, no predicted foreground for precision, no true foreground for recall).
    """
    true, pred = np.asarray(true) != 0, np.asarray(pred) != 0
    if true.shape != pred.shape:
        raise UserError(f"true and predicted masks must have the same shape; got {true.shape} and {pred.shape}")
    tp = float(np.count_nonzero(true & pred))
    fp = float(np.count_nonzero(pred & ~true))
    fn = float(np.count_nonzero(true & ~pred))
    return {"dsc": _ratio(2 * tp, 2 * tp + fp + fn), "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn)}


def mean_region_scores(trues: Iterable[np.ndarray], preds: Iterable[np.ndarray]) -> dict[str, dict[str, float]]:
    """Per-image :func:`region_scores` averaged over images (``{key: {'mean', 'n', 'n_nan'}}``)."""
    trues, preds = list(trues), list(preds)
    if len(trues) != len(preds):
        raise UserError(f"got {len(trues)} true and {len(preds)} predicted masks; expected equal numbers")
    return mean_rows(region_scores(t, p) for t, p in zip(trues, preds))


