"""Evaluation metrics with the community's definitions, vectorised.

Instance (per image, averaged over images): :func:`instance_stats`, :func:`pq_per_class`.
PanNuke (per image, per tissue, over tissues): :func:`pannuke_pq`.
CoNIC (pooled over images): :func:`conic_mpq_plus`, :func:`conic_r2`.
Detection/classification (pooled): :func:`type_f1` (HoVer-Net, centroid pairing),
:func:`coverage_f1` of :func:`coverage_counts` (CHR-Net, pixel coverage).
Glands (per image): :func:`glas_object_metrics`. Semantic (accumulated): :func:`semantic_iou`.
Binary regions (per image, averaged): :func:`region_scores`, :func:`mean_region_scores`.
Aggregation of per-image rows: :func:`mean_rows`.
"""

from metrics.aggregate import mean_rows, nanmean
from metrics.coverage import coverage_counts, coverage_f1
from metrics.detection import pair_centroids, type_f1
from metrics.gland import glas_object_metrics
from metrics.instance import (
    INSTANCE_KEYS,
    conic_mpq_plus,
    conic_r2,
    instance_stats,
    pannuke_pq,
    pq_counts,
    pq_per_class,
)
from metrics.region import REGION_KEYS, mean_region_scores, region_scores
from metrics.semantic import semantic_iou

__all__ = [
    "INSTANCE_KEYS",
    "REGION_KEYS",
    "conic_mpq_plus",
    "conic_r2",
    "coverage_counts",
    "coverage_f1",
    "glas_object_metrics",
    "instance_stats",
    "mean_region_scores",
    "mean_rows",
    "nanmean",
    "pair_centroids",
    "pannuke_pq",
    "pq_counts",
    "pq_per_class",
    "region_scores",
    "semantic_iou",
    "type_f1",
]
