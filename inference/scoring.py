"""``process.py --gt``: score processed results against a ground truth, per task.

- instance: ``--gt KIND:ROOT``, a dataset with instance maps (``loader.read_dataset``);
- semantic: ``--gt KIND:ROOT`` (its per-pixel type maps are the class maps) or ``--gt DIR``
  (a folder of label images ``<image name>.png|.tif|.npy`` holding class ids);
- patch: ``--gt FILE.csv`` with a ``name`` column and one 0/1 column per class.

Each writes ``metrics.csv`` (one row per image, then a ``pooled`` row where the task pools)
and ``metrics.json`` to the output folder and prints the pooled scores.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from loader import read_dataset
from metrics.patch import image_scores, patch_scores
from metrics.semantic import confusion_matrix, confusion_scores
from misc.errors import UserError
from misc.io import IMAGE_EXTENSIONS, atomic_write, read_label
from postproc.semantic import check_class_ids

log = logging.getLogger(__name__)


def parse_gt(spec: str) -> tuple[str, str]:
    """Split ``KIND:ROOT`` (the root may itself hold ':')."""
    kind, sep, root = spec.partition(":")
    if not sep or not kind or not root:
        raise UserError(f"--gt '{spec}': expected KIND:ROOT, e.g. monuseg:/data/monuseg (an instance result is "
                        "scored against a dataset with instance maps)")
    return kind, root


def _plain(value: Any) -> Any:
    """JSON-ready value (NaN → None, numpy → Python)."""
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_tables(output_dir: Path, rows: list[dict[str, Any]], pooled: dict[str, Any], options: dict) -> list[Path]:
    """Write ``metrics.csv`` (``rows`` then a ``pooled`` row) and ``metrics.json``."""
    csv_path, json_path = output_dir / "metrics.csv", output_dir / "metrics.json"
    table = [*rows, {"name": "pooled", **pooled}]
    columns = list(dict.fromkeys(key for row in table for key in row))
    with atomic_write(csv_path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    content = {"pooled": {k: _plain(v) for k, v in pooled.items()},
               "images": [{k: _plain(v) for k, v in row.items()} for row in rows], "options": options}
    with atomic_write(json_path, "w") as handle:
        json.dump(content, handle, indent=1)
    print("  ".join(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}" for key, value in pooled.items()))
    return [csv_path, json_path]


# --- semantic ---------------------------------------------------------------------------------

def _label_files(folder: Path) -> dict[str, Path]:
    suffixes = {*IMAGE_EXTENSIONS, ".npy"}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in suffixes}


def semantic_truths(gt: str, names: list[str]) -> dict[str, tuple[np.ndarray, str]]:
    """True class maps of the images ``names``: name → ((H, W) int class map, where it came from).

    Raises:
        UserError: a patch CSV given, a dataset without class maps (instance maps only), or
            no image paired.
    """
    path = Path(gt)
    if path.suffix.lower() == ".csv":
        raise UserError(f"--gt {gt}: a semantic result is scored against class maps (a folder of label images "
                        "or KIND:ROOT), not image-level labels")
    truths: dict[str, tuple[np.ndarray, str]] = {}
    if path.is_dir():
        files = _label_files(path)
        for name in names:
            if name in files:
                truths[name] = (np.asarray(read_label(files[name]), np.int64), str(files[name]))
        return truths
    kind, root = parse_gt(gt)
    for sample in read_dataset(kind, root):
        if sample.name not in names:
            continue
        if sample.type_map is None:
            raise UserError(f"--gt {gt}: '{sample.name}' has instance maps but no class map; a semantic result is "
                            "scored against per-pixel class maps (a typed dataset or a folder of label images)")
        truths[sample.name] = (np.asarray(sample.type_map, np.int64), f"{gt} ('{sample.name}')")
    return truths


def score_semantic(gt: str, predictions: dict[str, dict[str, np.ndarray]], class_info: dict, info_source: str,
                   output_dir: Path) -> list[Path]:
    """Per-class IoU and Dice, mIoU, fIoU and pixel accuracy per image and pooled over the set
    (from one accumulated confusion matrix; ``metrics.semantic.confusion_scores``).

    Args:
        predictions: image name → {stage: (H, W) predicted class map}: ``''`` the result's
            ``class_map`` (unprefixed columns) and, for a staged result, every stage (columns
            ``<stage>:<score>``; ``models.tasks.stage_class_maps``).
        class_info: ``{id: (name, colour)}``; true maps must hold only its ids.
        info_source: where ``class_info`` came from (for messages).

    Raises:
        UserError: a true map of another shape or with ids outside ``class_info`` (e.g. an
            instance map), or nothing paired.
    """
    truths = semantic_truths(gt, sorted(predictions))
    if not truths:
        raise UserError(f"--gt {gt}: no ground truth matches a processed image (e.g. '{next(iter(predictions))}')")
    unpaired = sorted(set(predictions) - set(truths))
    if unpaired:
        log.warning("no ground truth in %s for %d image(s): %s", gt, len(unpaired), unpaired[:5])
    classes = max(class_info) + 1
    names = {c: class_info[c][0] for c in sorted(class_info)}
    stages = list(dict.fromkeys(stage for name in truths for stage in predictions[name]))
    pooled_confusion = {stage: np.zeros((classes, classes), np.int64) for stage in stages}
    rows = []
    for name in sorted(truths):
        truth, source = truths[name]
        row: dict[str, Any] = {"name": name}
        for stage in stages:
            pred = predictions[name][stage]
            if truth.shape != pred.shape:
                raise UserError(f"{source}: class map of shape {truth.shape}, the prediction of '{name}' has {pred.shape}")
            if int(truth.max(initial=0)) > max(class_info) or int(truth.min(initial=0)) < 0:
                raise UserError(f"{source}: holds ids {int(truth.min(initial=0))}..{int(truth.max(initial=0))} but "
                                f"{info_source} has the class ids {sorted(class_info)}; expected a class map "
                                "(is it an instance map?)")
            check_class_ids(truth, class_info, source, info_source)
            confusion = confusion_matrix(truth, pred, classes)
            pooled_confusion[stage] += confusion
            row.update(_semantic_row(confusion_scores(confusion), names, stage))
        rows.append(row)
    pooled: dict[str, Any] = {}
    for stage in stages:
        pooled.update(_semantic_row(confusion_scores(pooled_confusion[stage]), names, stage))
    options = {"gt": gt, "classes": names, "unpaired": unpaired, "stages": [s for s in stages if s]}
    return write_tables(output_dir, rows, pooled, options)


def _semantic_row(scores: dict, names: dict[int, str], stage: str = "") -> dict[str, float]:
    """Scores of one class map as columns, prefixed ``<stage>:`` for a stage's map."""
    prefix = f"{stage}:" if stage else ""
    row = {f"{prefix}{key}": scores[key] for key in ("pixel_accuracy", "miou", "fiou", "mdice")}
    row.update({f"{prefix}iou_{names[c]}": float(scores["iou"][c]) for c in names})
    row.update({f"{prefix}dice_{names[c]}": float(scores["dice"][c]) for c in names})
    return row


# --- patch ------------------------------------------------------------------------------------

def read_patch_labels(path: str, class_names: list[str]) -> dict[str, np.ndarray]:
    """Image-level labels from a CSV: a ``name`` column and one 0/1 column per class.

    Returns:
        name → (C,) int labels in the order of ``class_names``.

    Raises:
        UserError: not a CSV file, columns other than ``name`` + the classes, or entries not 0/1.
    """
    csv_path = Path(path)
    if csv_path.suffix.lower() != ".csv" or not csv_path.is_file():
        raise UserError(f"--gt {path}: a patch result is scored against a CSV of image-level labels "
                        f"(columns name,{','.join(class_names)}), not instance or class maps")
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        if "name" not in columns or sorted(c for c in columns if c != "name") != sorted(class_names):
            raise UserError(f"{csv_path}: columns {columns} do not match the checkpoint's classes; expected "
                            f"name,{','.join(class_names)}")
        labels = {}
        for line, row in enumerate(reader, start=2):
            values = [row[c].strip() for c in class_names]
            if any(v not in ("0", "1") for v in values):
                raise UserError(f"{csv_path}: line {line} ('{row['name']}') has labels {values}; expected 0 or 1")
            labels[row["name"]] = np.array([int(v) for v in values], np.int64)
    return labels


def score_patches(gt: str, predictions: dict[str, tuple[np.ndarray, np.ndarray]], class_names: list[str],
                  multilabel: bool, output_dir: Path) -> list[Path]:
    """Per-class ROC AUC and F1 at the threshold, accuracy (multi-class) or exact match, label
    accuracy and Hamming score (multi-label), over the images paired with ``gt``
    (``metrics.patch.patch_scores``); per image the correctness of its labels.

    Args:
        predictions: image name → ((C,) probabilities, (C,) 0/1 labels).
    """
    truths = read_patch_labels(gt, class_names)
    names = sorted(set(truths) & set(predictions))
    if not names:
        raise UserError(f"--gt {gt}: no row names a processed image (e.g. '{next(iter(predictions))}')")
    unpaired = sorted(set(predictions) - set(truths))
    if unpaired:
        log.warning("no labels in %s for %d image(s): %s", gt, len(unpaired), unpaired[:5])
    truth = np.stack([truths[n] for n in names])
    probs = np.stack([predictions[n][0] for n in names])
    labels = np.stack([predictions[n][1] for n in names])
    rows = [{"name": n, **image_scores(truth[i:i + 1], probs[i:i + 1], labels[i:i + 1], multilabel)}
            for i, n in enumerate(names)]
    pooled = patch_scores(truth, probs, labels, multilabel, class_names)
    return write_tables(output_dir, rows, pooled, {"gt": gt, "classes": class_names, "multilabel": multilabel,
                                                   "unpaired": unpaired})
