"""Semantic-segmentation scores accumulated over a data set (HistoSegNet evaluation): per-class
IoU and Dice, mIoU, fIoU, pixel accuracy, from confusion matrices."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from misc.errors import UserError


def _as_map_list(maps: np.ndarray | Iterable[np.ndarray]) -> list[np.ndarray]:
    if isinstance(maps, np.ndarray) and maps.ndim == 2:
        return [maps]
    return [np.asarray(m) for m in maps]


def confusion_matrix(true: np.ndarray, pred: np.ndarray, nr_classes: int) -> np.ndarray:
    """(nr_classes, nr_classes) int64 pixel counts, rows = true class, columns = predicted class.

    Args:
        true, pred: (H, W) integer class maps with values in 0..nr_classes-1.
    """
    true = np.asarray(true)
    pred = np.asarray(pred)
    if true.shape != pred.shape:
        raise UserError(f"true and pred class maps must have the same shape; got {true.shape} and {pred.shape}")
    for side, m in (("true", true), ("pred", pred)):
        if m.size and (m.min() < 0 or m.max() >= nr_classes):
            raise UserError(f"{side} class map holds values {m.min()}..{m.max()}; expected 0..{nr_classes - 1}")
    codes = true.astype(np.int64).ravel() * nr_classes + pred.astype(np.int64).ravel()
    return np.bincount(codes, minlength=nr_classes * nr_classes).reshape(nr_classes, nr_classes)


def semantic_iou(
    true: np.ndarray | Iterable[np.ndarray], pred: np.ndarray | Iterable[np.ndarray], nr_classes: int
) -> dict:
    """Per-class IoU accumulated over a set, mIoU and HistoSegNet's frequency-weighted IoU.

    IoU_c = Σ intersection / Σ union over all images (from one accumulated confusion
    matrix); NaN for a class in neither truth nor prediction. mIoU = plain mean over classes
    present in truth or prediction. fIoU = Σ_c w_c IoU_c with log-inverse-frequency weights
    w_c ∝ 1 / log n_c of the true pixel counts n_c, normalised to sum 1; classes with fewer
    than 2 true pixels get weight 0 (log 1 = 0 would make the weight infinite).

    Args:
        true, pred: one (H, W) integer class map each, or equal-length sequences of them.
        nr_classes: number of classes (values 0..nr_classes-1; 0 is a class like any other).

    Returns:
        dict: ``iou_per_class`` ((nr_classes,) float64), ``miou``, ``fiou`` (floats) and
        ``confusion`` ((nr_classes, nr_classes) int64).
    """
    true_maps, pred_maps = _as_map_list(true), _as_map_list(pred)
    if len(true_maps) != len(pred_maps):
        raise UserError(f"got {len(true_maps)} true and {len(pred_maps)} predicted class maps; expected equal numbers")
    confusion = np.zeros((nr_classes, nr_classes), dtype=np.int64)
    for t, p in zip(true_maps, pred_maps):
        confusion += confusion_matrix(t, p, nr_classes)
    scores = confusion_scores(confusion)
    return {"iou_per_class": scores["iou"], "miou": scores["miou"], "fiou": scores["fiou"], "confusion": confusion}


def fiou_weights(true_count: np.ndarray) -> np.ndarray:
    """HistoSegNet's log-inverse-frequency class weights: w_c ∝ (Σ_j log n_j) / log n_c of the
    true pixel counts n_c, normalised to sum 1 (the constant numerator cancels); classes with
    fewer than 2 true pixels get 0 (log 1 = 0). All zeros when no class has 2 pixels.

    Args:
        true_count: (C,) true pixel counts.

    Returns:
        (C,) float64 weights.
    """
    counts = np.asarray(true_count, np.float64)
    inverse = np.divide(1.0, np.log(np.maximum(counts, 1.0)), out=np.zeros(len(counts)), where=counts > 1)
    total = inverse.sum()
    return inverse / total if total > 0 else inverse


def confusion_scores(confusion: np.ndarray) -> dict:
    """Scores of a (C, C) confusion matrix (rows true, columns predicted).

    Returns:
        ``iou`` and ``dice`` ((C,) float64; NaN for a class in neither truth nor prediction),
        ``miou`` and ``mdice`` (means over the classes present in truth or prediction),
        ``fiou`` (Σ_c w_c IoU_c with :func:`fiou_weights`, NaN when no class has 2 true
        pixels) and ``pixel_accuracy`` (share of pixels whose class is right; NaN for none).
    """
    confusion = np.asarray(confusion, np.int64)
    inter = np.diag(confusion).astype(np.float64)
    true_count = confusion.sum(axis=1).astype(np.float64)
    pred_count = confusion.sum(axis=0).astype(np.float64)
    union = true_count + pred_count - inter
    present = union > 0
    nan = np.full(len(inter), np.nan)
    iou = np.divide(inter, union, out=nan.copy(), where=present)
    dice = np.divide(2 * inter, true_count + pred_count, out=nan.copy(), where=present)
    weights = fiou_weights(true_count)
    total = confusion.sum()
    return {
        "iou": iou,
        "dice": dice,
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "mdice": float(dice[present].mean()) if present.any() else float("nan"),
        "fiou": float((weights * np.nan_to_num(iou)).sum()) if weights.sum() > 0 else float("nan"),
        "pixel_accuracy": float(inter.sum() / total) if total else float("nan"),
    }
