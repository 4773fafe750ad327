"""Score pairs of true and predicted label maps: per-image rows, pooled (data-set level)
results, the printed table and the CSV/JSON files (``python -m metrics`` and ``process.py --gt``)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from metrics.coverage import coverage_counts, coverage_f1
from metrics.detection import type_f1
from metrics.gland import glas_object_metrics
from metrics.instance import conic_mpq_plus, conic_r2, instance_stats, pq_per_class
from metrics.overlap import dense_ids
from misc.io import atomic_write


@dataclass(frozen=True)
class LabelPair:
    """One image's maps: (H, W) instance maps and, when types are scored, (H, W) type maps."""

    name: str
    true_inst: np.ndarray
    pred_inst: np.ndarray
    true_type: np.ndarray | None
    pred_type: np.ndarray | None


def instance_types(inst_map: np.ndarray, type_map: np.ndarray, nr_types: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (x, y) and majority type of every instance.

    The type is the most frequent non-zero type among the instance's pixels (ties to the
    lowest type), 0 when all its pixels are type 0.

    Returns:
        ``(cents, types)``: (N, 2) float64 centroids in pixels and (N,) int64 types, in id order.
    """
    dense, n = dense_ids(inst_map)
    flat = dense.ravel()
    rows, cols = np.indices(inst_map.shape)
    area = np.bincount(flat, minlength=n + 1)[1:]
    cy = np.bincount(flat, weights=rows.ravel(), minlength=n + 1)[1:] / np.maximum(area, 1)
    cx = np.bincount(flat, weights=cols.ravel(), minlength=n + 1)[1:] / np.maximum(area, 1)
    votes = np.bincount(flat * (nr_types + 1) + type_map.ravel(), minlength=(n + 1) * (nr_types + 1))
    votes = votes.reshape(n + 1, nr_types + 1)[1:, 1:]
    types = np.where(votes.sum(axis=1) > 0, votes.argmax(axis=1) + 1, 0)
    return np.stack([cx, cy], axis=1), types.astype(np.int64)


def central_crop(array: np.ndarray, size: int | None) -> np.ndarray:
    """Central ``size`` x ``size`` window of an (H, W) map (the whole map when ``size`` is None or larger)."""
    if size is None:
        return array
    h, w = array.shape
    top, left = max((h - size) // 2, 0), max((w - size) // 2, 0)
    return array[top : top + size, left : left + size]


def type_counts(inst_map: np.ndarray, type_map: np.ndarray, nr_types: int) -> np.ndarray:
    """(nr_types,) int64 number of instances of each type 1..nr_types."""
    _, types = instance_types(inst_map, type_map, nr_types)
    return np.bincount(types, minlength=nr_types + 1)[1 : nr_types + 1]


def score_pairs(pairs: Sequence[LabelPair], nr_types: int | None, radius: float, count_crop: int | None,
                gland: bool) -> tuple[list[dict], dict]:
    """Per-image rows and pooled (data-set level) results."""
    rows = []
    for pair in pairs:
        row: dict = {"name": pair.name} | instance_stats(pair.true_inst, pair.pred_inst)
        if nr_types is not None:
            per_class = pq_per_class(pair.true_inst, pair.true_type, pair.pred_inst, pair.pred_type, nr_types)
            row |= {f"pq_type{c}": float(v) for c, v in enumerate(per_class, start=1)}
        if gland:
            row |= {f"gland_{k}": v for k, v in glas_object_metrics(pair.true_inst, pair.pred_inst).items()}
        rows.append(row)
    pooled: dict = {}
    if nr_types is not None:
        pooled |= _pooled_types(pairs, nr_types, radius, count_crop)
    if gland:
        tp, fp, fn = (sum(r[f"gland_{k}"] for r in rows) for k in ("tp", "fp", "fn"))
        pooled["gland_f1_pooled"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return rows, pooled


def _pooled_types(pairs: Sequence[LabelPair], nr_types: int, radius: float, count_crop: int | None) -> dict:
    mpq = conic_mpq_plus(
        ((np.stack([p.true_inst, p.true_type], -1), np.stack([p.pred_inst, p.pred_type], -1)) for p in pairs),
        nr_types,
    )
    true_pts = [instance_types(p.true_inst, p.true_type, nr_types) for p in pairs]
    pred_pts = [instance_types(p.pred_inst, p.pred_type, nr_types) for p in pairs]
    f1 = type_f1([c for c, _ in true_pts], [t for _, t in true_pts], [c for c, _ in pred_pts],
                 [t for _, t in pred_pts], nr_types, radius)
    true_counts = np.array([type_counts(central_crop(p.true_inst, count_crop), central_crop(p.true_type, count_crop),
                                        nr_types) for p in pairs])
    pred_counts = np.array([type_counts(central_crop(p.pred_inst, count_crop), central_crop(p.pred_type, count_crop),
                                        nr_types) for p in pairs])
    r2 = conic_r2(true_counts, pred_counts)
    coverage = coverage_f1(
        [coverage_counts(p.true_inst, p.true_type, p.pred_inst, p.pred_type, nr_types) for p in pairs])
    result = {"mpq_plus": mpq["mpq_plus"], "f1_d": f1["f1_d"], "acc_type": f1["acc"], "r2": r2["r2"],
              "coverage_f1": coverage["f1"]}
    for c in range(nr_types):
        result[f"pq_plus_type{c + 1}"] = float(mpq["pq_per_class"][c])
        result[f"f1_type{c + 1}"] = float(f1["f1_type"][c])
        result[f"coverage_f1_type{c + 1}"] = float(coverage["f1_type"][c])
        result[f"r2_type{c + 1}"] = float(r2["r2_per_class"][c])
    return result


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_table(rows: list[dict], means: dict, pooled: dict) -> None:
    """Print per-image rows, the mean row, the n_nan row and the pooled results."""
    keys = [k for k in rows[0] if k != "name"]
    table = [["name", *keys]]
    table += [[row["name"], *(_fmt(row[k]) for k in keys)] for row in rows]
    table.append(["mean", *(_fmt(means[k]["mean"]) for k in keys)])
    table.append(["n_nan", *(str(means[k]["n_nan"]) for k in keys)])
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print(f"{line[0]:<{widths[0]}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(line[1:], widths[1:])))
    for key, value in pooled.items():
        print(f"{key} (pooled): {_fmt(value)}")


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_results(out: Path, rows: list[dict], means: dict, pooled: dict, options: dict) -> Path:
    """Write per-image rows plus a mean and an n_nan row as CSV to ``out``, everything as JSON
    beside it (same stem, ``.json``; NaN written as null). Returns the JSON path."""
    keys = list(rows[0])
    with atomic_write(out, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(keys)
        for row in rows:
            writer.writerow([row[k] for k in keys])
        writer.writerow(["mean", *(means[k]["mean"] for k in keys[1:])])
        writer.writerow(["n_nan", *(means[k]["n_nan"] for k in keys[1:])])
    json_path = out.with_suffix(".json")
    payload = {"options": options, "per_image": rows, "mean": means, "pooled": pooled}
    with atomic_write(json_path, "w") as handle:
        json.dump(_json_safe(payload), handle, indent=1)
    return json_path
