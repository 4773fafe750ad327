"""Per-class decision thresholds, ROC-optimal on a validation split (SEEDS 4.2).

The published thresholds (``optimalScoreThresh``) are the ROC operating points of each class on
the validation set; we take the point that maximises Youden's J = TPR - FPR (the ROC point
farthest above the chance diagonal). A class whose validation labels are all 0 or all 1 has no
ROC curve and keeps the default threshold.
"""

from __future__ import annotations

import numpy as np

from misc.errors import UserError

DEFAULT_THRESHOLD = 0.5


def youden_threshold(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """The score threshold (predict positive when ``score >= t``) maximising TPR - FPR.

    Args:
        scores: (N,) float scores of one class.
        labels: (N,) 0/1 truth.

    Returns:
        The threshold (one of the scores; the highest of equally good ones), or None when the
        labels are all 0 or all 1.
    """
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    ranked, truth = np.asarray(scores, np.float64)[order], labels[order]
    tps, fps = np.cumsum(truth), np.cumsum(~truth)
    last_of_tie = np.r_[ranked[1:] != ranked[:-1], True]  # a threshold admits every equal score
    j = np.where(last_of_tie, tps / positives - fps / negatives, -np.inf)
    return float(ranked[int(np.argmax(j))])


def roc_optimal_thresholds(scores: np.ndarray, labels: np.ndarray,
                           default: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, list[int]]:
    """Youden-optimal thresholds of every class.

    Args:
        scores: (N, C) float sigmoid scores on the validation patches.
        labels: (N, C) 0/1 patch labels.
        default: threshold of classes without both positives and negatives.

    Returns:
        ``(thresholds (C,) float32, classes that kept the default)``.

    Raises:
        UserError: shapes that differ, or labels other than 0/1.
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise UserError(f"thresholds need (N, C) scores and labels of one shape; got {scores.shape} and {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise UserError("thresholds: patch labels must be 0 or 1")
    thresholds = np.full(scores.shape[1], default, np.float32)
    kept = []
    for c in range(scores.shape[1]):  # over classes
        value = youden_threshold(scores[:, c], labels[:, c])
        if value is None:
            kept.append(c)
        else:
            thresholds[c] = value
    return thresholds, kept
