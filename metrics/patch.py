"""Image-level (patch) classification scores: ROC AUC, F1 at the decision threshold, accuracy
(multi-class), exact match and Hamming score (multi-label)."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from misc.errors import UserError


def roc_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney) formula, ties counted half.

    AUC = (Σ ranks of the positives − n₊(n₊ + 1)/2) / (n₊ n₋), ranks 1..N of ``score`` with
    tied scores sharing their mean rank.

    Args:
        truth: (N,) 0/1 labels.
        score: (N,) float scores, larger = more positive.

    Returns:
        The AUC in [0, 1]; NaN when ``truth`` holds a single class.
    """
    truth = np.asarray(truth).astype(bool).ravel()
    score = np.asarray(score, np.float64).ravel()
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """F1 of 0/1 vectors; 1.0 when neither side has a positive."""
    tp = float(np.sum(truth & pred))
    denominator = float(truth.sum() + pred.sum())
    return 2 * tp / denominator if denominator else 1.0


def _check(truth: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> None:
    if not (truth.shape == probs.shape == labels.shape) or truth.ndim != 2:
        raise UserError(f"patch scores need (N, C) truth, probabilities and labels of one shape; got "
                        f"{truth.shape}, {probs.shape}, {labels.shape}")


def patch_scores(truth: np.ndarray, probs: np.ndarray, labels: np.ndarray, multilabel: bool,
                 class_names: list[str] | None = None) -> dict[str, float]:
    """Scores of a set of images.

    Args:
        truth: (N, C) 0/1 true labels (one-hot rows for multi-class).
        probs: (N, C) float class probabilities.
        labels: (N, C) 0/1 predicted labels (thresholded, or the one-hot arg-max for multi-class).
        multilabel: multi-label task (else multi-class).
        class_names: names of the C classes for the per-class keys (default ``0..C-1``).

    Returns:
        ``auc_<class>``, ``f1_<class>`` per class, ``mean_auc`` (over classes with both labels
        present), ``macro_f1``; multi-class: ``accuracy`` (arg-max of ``probs`` equals the true
        class); multi-label: ``exact_match`` (all labels of an image right), ``label_accuracy``
        (1 − Hamming loss: share of right (image, class) labels) and ``hamming_score``
        (mean over images of |T ∩ P| / |T ∪ P|, 1 when both are empty; Godbole & Sarawagi 2004).
    """
    truth = np.asarray(truth).astype(bool)
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels).astype(bool)
    _check(truth, probs, labels)
    names = class_names or [str(c) for c in range(truth.shape[1])]
    scores: dict[str, float] = {}
    aucs, f1s = [], []
    for c, name in enumerate(names):
        aucs.append(roc_auc(truth[:, c], probs[:, c]))
        f1s.append(_f1(truth[:, c], labels[:, c]))
        scores[f"auc_{name}"], scores[f"f1_{name}"] = aucs[-1], f1s[-1]
    finite = [v for v in aucs if np.isfinite(v)]
    scores["mean_auc"] = float(np.mean(finite)) if finite else float("nan")
    scores["macro_f1"] = float(np.mean(f1s))
    scores.update(image_scores(truth, probs, labels, multilabel))
    return scores


def image_scores(truth: np.ndarray, probs: np.ndarray, labels: np.ndarray, multilabel: bool) -> dict[str, float]:
    """The per-image part of :func:`patch_scores` (means over the N images), for (N, C) inputs."""
    truth, labels = np.asarray(truth).astype(bool), np.asarray(labels).astype(bool)
    if not multilabel:
        return {"accuracy": float(np.mean(np.argmax(probs, 1) == np.argmax(truth, 1)))}
    union = (truth | labels).sum(1)
    inter = (truth & labels).sum(1)
    jaccard = np.divide(inter, union, out=np.ones(len(truth)), where=union > 0)
    return {
        "exact_match": float(np.mean((truth == labels).all(1))),
        "label_accuracy": float(np.mean(truth == labels)),
        "hamming_score": float(jaccard.mean()),
    }
