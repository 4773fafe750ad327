"""Instance-segmentation metrics: Dice, Dice2, AJI, AJI+, DQ/SQ/PQ and their class-wise forms.

Semantics follow HoVer-Net ``metrics/stats_utils.py`` / ``compute_stats.py``, PanNuke-metrics
``run.py`` and CoNIC ``compute_stats.py``; the arithmetic is vectorised (one joint
``bincount`` per map pair). Aggregation: per-image values are averaged over images
(:func:`metrics.aggregate.mean_rows`), except CoNIC mPQ+ (pooled counts) and R² (over images).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from metrics.aggregate import nanmean
from metrics.matching import hungarian_pairs
from metrics.overlap import Overlap, check_same_shape, dense_ids, overlap_table
from misc.errors import UserError

INSTANCE_KEYS = ("dice", "dice2", "aji", "aji_plus", "dq", "sq", "pq")


@dataclass(frozen=True)
class PQCounts:
    """Matching counts of one map pair: true positives, false positives, false negatives, ΣIoU of TPs."""

    tp: int
    fp: int
    fn: int
    iou_sum: float

    def dq_sq_pq(self) -> tuple[float, float, float]:
        """DQ = TP/(TP + FP/2 + FN/2), SQ = ΣIoU/TP (0 when TP = 0), PQ = DQ·SQ; NaN when all counts are 0."""
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        if denom == 0:
            return float("nan"), float("nan"), float("nan")
        dq = self.tp / denom
        sq = self.iou_sum / self.tp if self.tp else 0.0
        return dq, sq, dq * sq


def pq_pairs(ov: Overlap, match_iou: float = 0.5) -> np.ndarray:
    """Indices of the PQ true-positive pairs in ``ov``'s pair list.

    ``match_iou >= 0.5``: every pair with IoU strictly above ``match_iou`` (unique by
    construction). Below 0.5: a maximum-IoU one-to-one (Hungarian) matching, then pairs with
    IoU strictly above ``match_iou``.
    """
    if match_iou < 0:
        raise UserError(f"match_iou must be >= 0; got {match_iou}")
    iou = ov.pair_iou
    if match_iou >= 0.5:
        return np.flatnonzero(iou > match_iou)
    matched = hungarian_pairs(ov, iou)
    return matched[iou[matched] > match_iou]


def pq_counts(true_inst: np.ndarray, pred_inst: np.ndarray, match_iou: float = 0.5) -> PQCounts:
    """TP/FP/FN/ΣIoU of two (H, W) instance maps (any integer or float dtype)."""
    return _counts_of(overlap_table(true_inst, pred_inst), match_iou)


def _counts_of(ov: Overlap, match_iou: float) -> PQCounts:
    tp_idx = pq_pairs(ov, match_iou)
    tp = int(tp_idx.size)
    return PQCounts(tp=tp, fp=ov.n_pred - tp, fn=ov.n_true - tp, iou_sum=float(ov.pair_iou[tp_idx].sum()))


def _aji_from_pairs(ov: Overlap, chosen: np.ndarray) -> float:
    """AJI given the chosen (true, pred) pairs: ΣI / (ΣU + unmatched true + unmatched pred areas)."""
    inter = float(ov.pair_inter[chosen].sum())
    union = float(ov.pair_union[chosen].sum())
    true_used = np.zeros(ov.n_true, dtype=bool)
    pred_used = np.zeros(ov.n_pred, dtype=bool)
    true_used[ov.pair_true[chosen]] = True
    pred_used[ov.pair_pred[chosen]] = True
    union += float(ov.true_area[~true_used].sum()) + float(ov.pred_area[~pred_used].sum())
    return inter / union


def aji_pairs(ov: Overlap) -> np.ndarray:
    """For each true instance with any overlap, the pair with its max-IoU prediction.

    Ties go to the lowest prediction id; a prediction may be chosen by several true instances.
    """
    order = np.lexsort((ov.pair_pred, -ov.pair_iou, ov.pair_true))
    first = np.ones(order.size, dtype=bool)
    first[1:] = ov.pair_true[order][1:] != ov.pair_true[order][:-1]
    return order[first]


def instance_stats(true_inst: np.ndarray, pred_inst: np.ndarray, match_iou: float = 0.5) -> dict[str, float]:
    """All seven HoVer-Net instance metrics of one image.

    Ids are renumbered first, so non-contiguous, huge, negative or float ids and maps without
    background all work. Definitions (HoVer-Net ``stats_utils.py``):

    - ``dice``: binary Dice of the foreground masks.
    - ``dice2``: CPM ensemble Dice, 2·ΣI / Σ(|G|+|S|) over every overlapping pair (0 when no
      pair overlaps; the published code divides 0 by 0 there).
    - ``aji``: each true instance paired with its max-IoU prediction (ties to the lowest id;
      predictions may be reused); ΣI / (ΣU + areas of unpaired true and predicted instances).
    - ``aji_plus``: as AJI with a one-to-one maximum-IoU (Hungarian) pairing.
    - ``dq``, ``sq``, ``pq``: pairs with IoU strictly > ``match_iou`` (Hungarian below 0.5);
      DQ = TP/(TP+FP/2+FN/2), SQ = ΣIoU/TP, PQ = DQ·SQ. The published SQ divides by
      TP + 1e-6; this one does not (relative difference ≤ 1e-6).

    Aggregate over a data set as the mean of per-image values (:func:`metrics.mean_rows`).

    Args:
        true_inst, pred_inst: (H, W) instance maps of equal shape, 0 = background.
        match_iou: PQ pairing threshold.

    Returns:
        dict with keys ``dice, dice2, aji, aji_plus, dq, sq, pq`` (floats). Both maps empty:
        all NaN. Exactly one map empty: all 0.0.
    """
    ov = overlap_table(true_inst, pred_inst)
    if ov.n_true == 0 and ov.n_pred == 0:
        return {key: float("nan") for key in INSTANCE_KEYS}
    if ov.n_true == 0 or ov.n_pred == 0:
        return {key: 0.0 for key in INSTANCE_KEYS}
    inter_total = float(ov.pair_inter.sum())
    dice = 2.0 * inter_total / float(ov.true_area.sum() + ov.pred_area.sum())
    pair_sizes = float((ov.true_area[ov.pair_true] + ov.pred_area[ov.pair_pred]).sum())
    dice2 = 2.0 * inter_total / pair_sizes if pair_sizes else 0.0
    aji = _aji_from_pairs(ov, aji_pairs(ov))
    aji_plus = _aji_from_pairs(ov, hungarian_pairs(ov, ov.pair_iou))
    dq, sq, pq = _counts_of(ov, match_iou).dq_sq_pq()
    return {"dice": dice, "dice2": dice2, "aji": aji, "aji_plus": aji_plus, "dq": dq, "sq": sq, "pq": pq}


def class_instance_map(inst_map: np.ndarray, type_map: np.ndarray, class_id: int) -> np.ndarray:
    """Instance map restricted to pixels of one class (CoNIC: ``inst * (type == c)``).

    Args:
        inst_map: (H, W) instance ids; type_map: (H, W) per-pixel class ids.

    Returns:
        (H, W) map of the same dtype as ``inst_map``, 0 outside class ``class_id``.
    """
    return np.where(np.asarray(type_map) == class_id, inst_map, 0)


def _check_types(inst_map: np.ndarray, type_map: np.ndarray, side: str) -> None:
    if np.shape(inst_map) != np.shape(type_map):
        raise UserError(
            f"{side} instance map {np.shape(inst_map)} and type map {np.shape(type_map)} must have the same shape"
        )


def class_pq_counts(
    true_inst: np.ndarray,
    true_type: np.ndarray,
    pred_inst: np.ndarray,
    pred_type: np.ndarray,
    nr_classes: int,
    match_iou: float = 0.5,
) -> list[PQCounts]:
    """PQ counts of classes 1..``nr_classes`` in one image (CoNIC ``get_multi_pq_info``)."""
    _check_types(true_inst, true_type, "true")
    _check_types(pred_inst, pred_type, "pred")
    check_same_shape(true_inst, pred_inst, "instance maps")
    return [
        pq_counts(
            class_instance_map(true_inst, true_type, c), class_instance_map(pred_inst, pred_type, c), match_iou
        )
        for c in range(1, nr_classes + 1)
    ]


def pq_per_class(
    true_inst: np.ndarray,
    true_type: np.ndarray,
    pred_inst: np.ndarray,
    pred_type: np.ndarray,
    nr_classes: int,
    match_iou: float = 0.5,
) -> np.ndarray:
    """Per-image PQ of each class 1..``nr_classes``.

    The instance maps are restricted to the pixels of each class in the matching type map,
    then scored as in :func:`instance_stats`. Average over images with a NaN-skipping mean.

    Args:
        true_inst, pred_inst: (H, W) instance maps; true_type, pred_type: (H, W) class maps
            (0 = background, classes 1..nr_classes).

    Returns:
        (nr_classes,) float64; entry c-1 is the PQ of class c: NaN when the class is in
        neither map, 0.0 when it is in only one.
    """
    counts = class_pq_counts(true_inst, true_type, pred_inst, pred_type, nr_classes, match_iou)
    return np.array([c.dq_sq_pq()[2] for c in counts], dtype=np.float64)


def pannuke_binary_map(masks: np.ndarray, nr_classes: int) -> np.ndarray:
    """PanNuke ``binarize``: one instance map from the first ``nr_classes`` channels.

    Instances of later channels overwrite earlier ones where they overlap.

    Args:
        masks: (H, W, C) per-class instance maps, C >= nr_classes.

    Returns:
        (H, W) int64 instance map with ids unique across channels.
    """
    out = np.zeros(masks.shape[:2], dtype=np.int64)
    offset = 0
    for channel in range(nr_classes):
        dense, n = dense_ids(masks[..., channel])
        out = np.where(dense > 0, dense + offset, out)
        offset += n
    return out


def pannuke_pq(
    true_masks: np.ndarray, pred_masks: np.ndarray, tissues: Sequence[str], nr_classes: int = 5
) -> dict:
    """PanNuke mPQ and bPQ as PanNuke-metrics ``run.py`` computes them.

    Per image: PQ of each class (channel) whose truth is not empty (absent classes are NaN
    and skipped), the image's mPQ = NaN-mean over its classes, its bPQ = PQ of the binarised
    maps (NaN when the truth is empty). Per tissue: NaN-mean over its images. mPQ and bPQ:
    NaN-mean over tissues. Per-class PQ: NaN-mean over all images.

    Args:
        true_masks, pred_masks: (N, H, W, C) per-class instance maps (PanNuke ``masks.npy``;
            channels 0..nr_classes-1 are classes, any further channel, e.g. background, is ignored).
        tissues: N tissue names (PanNuke ``types.npy``).

    Returns:
        dict: ``mpq``, ``bpq`` (floats), ``pq_per_class`` ((nr_classes,) float64),
        ``tissue_mpq`` and ``tissue_bpq`` ({tissue: float}, tissues sorted by name),
        ``image_mpq`` and ``image_bpq`` ((N,) float64).
    """
    true_masks = np.asarray(true_masks)
    pred_masks = np.asarray(pred_masks)
    if true_masks.ndim != 4 or true_masks.shape != pred_masks.shape or true_masks.shape[-1] < nr_classes:
        raise UserError(
            f"true and pred masks must both be (N, H, W, C>={nr_classes}); "
            f"got {true_masks.shape} and {pred_masks.shape}"
        )
    tissues = np.asarray(tissues).astype(str)
    if tissues.shape != (true_masks.shape[0],):
        raise UserError(f"tissues must hold one name per image ({true_masks.shape[0]}); got shape {tissues.shape}")
    class_pq = np.full((true_masks.shape[0], nr_classes), np.nan)
    image_bpq = np.full(true_masks.shape[0], np.nan)
    for i in range(true_masks.shape[0]):
        for c in range(nr_classes):
            counts = pq_counts(true_masks[i, ..., c], pred_masks[i, ..., c])
            if counts.tp + counts.fn:
                class_pq[i, c] = counts.dq_sq_pq()[2]
        counts = pq_counts(pannuke_binary_map(true_masks[i], nr_classes), pannuke_binary_map(pred_masks[i], nr_classes))
        if counts.tp + counts.fn:
            image_bpq[i] = counts.dq_sq_pq()[2]
    image_mpq = nanmean(class_pq, axis=1)
    names = sorted(set(tissues.tolist()))
    tissue_mpq = {t: float(nanmean(image_mpq[tissues == t])) for t in names}
    tissue_bpq = {t: float(nanmean(image_bpq[tissues == t])) for t in names}
    return {
        "mpq": float(nanmean(np.array(list(tissue_mpq.values())))),
        "bpq": float(nanmean(np.array(list(tissue_bpq.values())))),
        "pq_per_class": nanmean(class_pq, axis=0),
        "tissue_mpq": tissue_mpq,
        "tissue_bpq": tissue_bpq,
        "image_mpq": image_mpq,
        "image_bpq": image_bpq,
    }


def _split_stack(stack: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    stack = np.asarray(stack)
    if stack.ndim != 3 or stack.shape[-1] != 2:
        raise UserError(f"{side} map must be (H, W, 2) [instance, type]; got shape {stack.shape}")
    return stack[..., 0], stack[..., 1]


def conic_mpq_plus(pairs: Iterable[tuple[np.ndarray, np.ndarray]], nr_classes: int, match_iou: float = 0.5) -> dict:
    """CoNIC multi-class PQ+ : TP, FP, FN and ΣIoU pooled over all images per class.

    PQ_c = [TP/(TP+FP/2+FN/2)]·[ΣIoU/TP] from the pooled counts (0 when TP = 0, also for a
    class absent everywhere); mPQ+ = plain mean over classes 1..nr_classes. CoNIC adds 1e-6
    to both denominators; this does not (difference ≤ 1e-6).

    Args:
        pairs: iterable of ``(true, pred)``, each (H, W, 2) with channels [instance, type].

    Returns:
        dict: ``mpq_plus`` (float), ``pq_per_class`` ((nr_classes,) float64), and the pooled
        ``tp``, ``fp``, ``fn`` (int64) and ``iou_sum`` (float64) arrays of shape (nr_classes,),
        ``n_images``.
    """
    totals = np.zeros((nr_classes, 4), dtype=np.float64)
    n_images = 0
    for true_stack, pred_stack in pairs:
        true_inst, true_type = _split_stack(true_stack, "true")
        pred_inst, pred_type = _split_stack(pred_stack, "pred")
        counts = class_pq_counts(true_inst, true_type, pred_inst, pred_type, nr_classes, match_iou)
        totals += np.array([[c.tp, c.fp, c.fn, c.iou_sum] for c in counts], dtype=np.float64)
        n_images += 1
    tp, fp, fn, iou_sum = totals.T
    denom = tp + 0.5 * fp + 0.5 * fn
    dq = np.divide(tp, denom, out=np.zeros(nr_classes), where=denom > 0)
    sq = np.divide(iou_sum, tp, out=np.zeros(nr_classes), where=tp > 0)
    pq = dq * sq
    return {
        "mpq_plus": float(pq.mean()) if nr_classes else float("nan"),
        "pq_per_class": pq,
        "tp": tp.astype(np.int64),
        "fp": fp.astype(np.int64),
        "fn": fn.astype(np.int64),
        "iou_sum": iou_sum,
        "n_images": n_images,
    }


def conic_r2(true_counts: np.ndarray, pred_counts: np.ndarray) -> dict:
    """CoNIC multi-class R² of per-image nucleus counts.

    Per class: R² = 1 − RSS/TSS over images (sklearn ``r2_score``: a constant true column
    scores 1.0 when predicted exactly, else 0.0); then the plain mean over classes.

    Args:
        true_counts, pred_counts: (N images, C classes) counts.

    Returns:
        dict: ``r2`` (float) and ``r2_per_class`` ((C,) float64); all NaN when N < 2.
    """
    true_counts = np.asarray(true_counts, dtype=np.float64)
    pred_counts = np.asarray(pred_counts, dtype=np.float64)
    if true_counts.ndim != 2 or true_counts.shape != pred_counts.shape:
        raise UserError(
            f"true and pred counts must both be (N images, C classes); got {true_counts.shape} and {pred_counts.shape}"
        )
    n_classes = true_counts.shape[1]
    if true_counts.shape[0] < 2:
        return {"r2": float("nan"), "r2_per_class": np.full(n_classes, np.nan)}
    rss = ((true_counts - pred_counts) ** 2).sum(axis=0)
    tss = ((true_counts - true_counts.mean(axis=0)) ** 2).sum(axis=0)
    constant_score = np.where(rss == 0, 1.0, 0.0)
    r2 = np.where(tss > 0, 1.0 - rss / np.where(tss > 0, tss, 1.0), constant_score)
    return {"r2": float(r2.mean()) if n_classes else float("nan"), "r2_per_class": r2}
