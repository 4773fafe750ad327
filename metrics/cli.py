"""Command line: score a folder of predicted label maps against a folder of true ones.

``python -m metrics --true DIR --pred DIR [--types N] [--radius 12] [--count-crop 224]
[--gland] [--out FILE]``
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from metrics.aggregate import mean_rows
from metrics.detection import type_f1
from metrics.gland import glas_object_metrics
from metrics.instance import conic_mpq_plus, conic_r2, instance_stats, pq_per_class
from metrics.overlap import dense_ids
from misc.errors import UserError, cli_main
from misc.io import LABEL_EXTENSIONS, atomic_write, read_label, read_label_stack


@dataclass(frozen=True)
class LabelPair:
    """One image's maps: (H, W) instance maps and, when types are scored, (H, W) type maps."""

    name: str
    true_inst: np.ndarray
    pred_inst: np.ndarray
    true_type: np.ndarray | None
    pred_type: np.ndarray | None


def label_files(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the label files in ``folder`` (``.npy``, ``.mat``, ``.png``, ``.tif``...).

    Raises:
        UserError: the folder is missing, holds no label file, or two files share a stem.
    """
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder; expected a folder of label files")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in LABEL_EXTENSIONS:
            if path.stem in files:
                raise UserError(f"{folder}: two label files share the stem '{path.stem}' ({files[path.stem].name}, {path.name})")
            files[path.stem] = path
    if not files:
        raise UserError(f"{folder}: no label files ({', '.join(LABEL_EXTENSIONS)})")
    return files


def pair_files(true_dir: Path, pred_dir: Path) -> list[tuple[str, Path, Path]]:
    """Pair true and predicted files by stem; every file must have its partner."""
    true_files, pred_files = label_files(true_dir), label_files(pred_dir)
    for stem in sorted(set(true_files) ^ set(pred_files)):
        have, lack = (true_files, pred_dir) if stem in true_files else (pred_files, true_dir)
        raise UserError(f"{have[stem]}: no file with stem '{stem}' in {lack}")
    return [(stem, true_files[stem], pred_files[stem]) for stem in sorted(true_files)]


def read_maps(path: Path, with_types: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an instance map and, if ``with_types``, a type map from one file.

    ``.mat``: variables ``inst_map`` and ``type_map``. ``.npy`` / images: (H, W) instances
    or (H, W, C>=2) with channels [instance, type].
    """
    if path.suffix.lower() == ".mat":
        inst = read_label(path, "inst_map")
        return inst, (read_label(path, "type_map") if with_types else None)
    stack = read_label_stack(path)
    if stack.ndim == 2:
        if with_types:
            raise UserError(f"{path}: holds only an instance map (shape {stack.shape}); --types needs (H, W, 2) [inst, type]")
        return stack, None
    return stack[..., 0], (stack[..., 1] if with_types else None)


def load_pair(name: str, true_path: Path, pred_path: Path, nr_types: int | None) -> LabelPair:
    """Read and check one true/pred pair (equal shapes, types within 0..nr_types)."""
    with_types = nr_types is not None
    true_inst, true_type = read_maps(true_path, with_types)
    pred_inst, pred_type = read_maps(pred_path, with_types)
    if true_inst.shape != pred_inst.shape:
        raise UserError(f"{pred_path}: shape {pred_inst.shape} differs from {true_path} shape {true_inst.shape}")
    for path, inst, types in ((true_path, true_inst, true_type), (pred_path, pred_inst, pred_type)):
        if types is None:
            continue
        if types.shape != inst.shape:
            raise UserError(f"{path}: type map shape {types.shape} differs from instance map shape {inst.shape}")
        if types.size and types.max() > nr_types:
            raise UserError(f"{path}: type map holds type {types.max()}, above --types {nr_types}")
    return LabelPair(name, true_inst, pred_inst, true_type, pred_type)


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
    result = {"mpq_plus": mpq["mpq_plus"], "f1_d": f1["f1_d"], "acc_type": f1["acc"], "r2": r2["r2"]}
    for c in range(nr_types):
        result[f"pq_plus_type{c + 1}"] = float(mpq["pq_per_class"][c])
        result[f"f1_type{c + 1}"] = float(f1["f1_type"][c])
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--true", required=True, type=Path, help="folder of true label files")
    parser.add_argument("--pred", required=True, type=Path, help="folder of predicted label files (same stems)")
    parser.add_argument("--types", type=int, default=None, metavar="N",
                        help="score nucleus types 1..N: per-type PQ, mPQ+, F1 and R^2")
    parser.add_argument("--radius", type=float, default=12.0, help="centroid pairing radius in px for F1 (default 12)")
    parser.add_argument("--count-crop", type=int, default=None, metavar="S",
                        help="count nuclei for R^2 in the central SxS crop (CoNIC: 224)")
    parser.add_argument("--gland", action="store_true", help="also GlaS object F1, Dice and Hausdorff")
    parser.add_argument("--out", type=Path, default=Path("metrics.csv"),
                        help="CSV file to write (default metrics.csv); the JSON goes beside it")
    args = parser.parse_args(argv)
    if args.types is not None and args.types < 1:
        raise UserError(f"--types must be >= 1; got {args.types}")
    if args.count_crop is not None and args.count_crop < 1:
        raise UserError(f"--count-crop must be >= 1; got {args.count_crop}")
    return args


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """Score every pair, print the table, write CSV + JSON; exit 2 on bad input."""
    args = parse_args(argv)
    pairs = [load_pair(name, t, p, args.types) for name, t, p in pair_files(args.true, args.pred)]
    rows, pooled = score_pairs(pairs, args.types, args.radius, args.count_crop, args.gland)
    means = mean_rows({k: v for k, v in r.items() if k != "name"} for r in rows)
    print_table(rows, means, pooled)
    options = {"true": str(args.true), "pred": str(args.pred), "types": args.types, "radius": args.radius,
               "count_crop": args.count_crop, "gland": args.gland}
    json_path = write_results(args.out, rows, means, pooled, options)
    print(f"wrote {args.out} and {json_path}")
    return 0
