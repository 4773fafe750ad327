"""Scores of HistoSegNet's three stages (Grad-CAM, adjusted, CRF) as one JSON line each.

``process.py`` writes the stages' label images (``label_gradcam/``, ``label_adjusted/``, and
``label/`` for the CRF); this reads them back with the true class maps of the images, optionally
merges predicted classes into others first (``--merge 5:0``: a class the truth does not have,
e.g. white background scored as the non-nucleus class of a type map), and prints per stage the
pooled per-class IoU, mIoU, fIoU and pixel accuracy (``metrics.semantic``)::

    python -m benchmarks.histosegnet_stages PRED_DIR TRUTH_DIR [--merge FROM:TO ...]
        [--names 0=tissue,1=other,...] [--field recipe=NAME ...]

TRUTH_DIR holds ``<image>.png|.npy`` class maps (e.g. a CoNSeP ``types/`` folder).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from metrics.semantic import confusion_matrix, confusion_scores
from misc.errors import UserError, cli_main
from misc.io import read_label

#: Stage name -> the folder of ``process.py``'s output holding its label images.
STAGE_FOLDERS = {"gradcam": "label_gradcam", "adjusted": "label_adjusted", "crf": "label"}


def parse_pairs(values: Sequence[str], what: str) -> dict[int, int]:
    """``['5:0', ...]`` -> {5: 0, ...}; UserError naming ``what`` for anything else."""
    pairs = {}
    for value in values:
        source, sep, target = value.partition(":")
        if not sep or not source.strip().isdigit() or not target.strip().isdigit():
            raise UserError(f"{what} '{value}': expected FROM:TO class ids, e.g. 5:0")
        pairs[int(source)] = int(target)
    return pairs


def merged(labels: np.ndarray, merge: dict[int, int]) -> np.ndarray:
    """(H, W) int labels with every id ``FROM`` of ``merge`` replaced by its ``TO``."""
    lookup = np.arange(max([int(labels.max(initial=0)), *merge, *merge.values()]) + 1)
    lookup[list(merge)] = list(merge.values())
    return lookup[labels]


def truth_file(folder: Path, name: str) -> Path:
    """The class map of image ``name`` in ``folder`` (``.png`` or ``.npy``)."""
    for suffix in (".png", ".npy"):
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    raise UserError(f"{folder}: no class map for '{name}' (.png or .npy)")


def stage_scores(pred_dir: Path, truth_dir: Path, merge: dict[int, int]) -> dict[str, dict]:
    """Pooled scores of every stage: stage -> ``confusion_scores`` of the summed confusion
    matrices over the images of ``pred_dir/label`` (their names pair them with ``truth_dir``).

    Raises:
        UserError: no label images, a stage folder without an image, shapes that differ.
    """
    names = sorted(p.stem for p in (pred_dir / "label").glob("*.png"))
    if not names:
        raise UserError(f"{pred_dir / 'label'}: no label images; run process.py with --formats label first")
    truths = {name: merged(read_label(truth_file(truth_dir, name)).astype(np.int64), merge) for name in names}
    out = {}
    for stage, folder in STAGE_FOLDERS.items():
        preds = {name: merged(read_label(pred_dir / folder / f"{name}.png").astype(np.int64), merge) for name in names}
        classes = 1 + max(int(max(t.max(), p.max())) for t, p in zip(truths.values(), preds.values()))
        total = np.zeros((classes, classes), np.int64)
        for name in names:  # over images: one confusion matrix each
            if preds[name].shape != truths[name].shape:
                raise UserError(f"'{name}': prediction {preds[name].shape} and truth {truths[name].shape} differ in shape")
            total += confusion_matrix(truths[name], preds[name], classes)
        out[stage] = confusion_scores(total)
    return out


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.histosegnet_stages", description=__doc__.split("\n")[0])
    parser.add_argument("pred_dir", type=Path, help="process.py output folder (label/, label_gradcam/, label_adjusted/)")
    parser.add_argument("truth_dir", type=Path, help="folder of true class maps <image>.png|.npy")
    parser.add_argument("--merge", nargs="*", default=[], help="FROM:TO predicted (and true) class ids merged before scoring")
    parser.add_argument("--names", default="", help="class names, e.g. 0=tissue,1=other (default: class ids)")
    parser.add_argument("--field", nargs="*", default=[], help="KEY=VALUE added to every line (e.g. recipe=NAME)")
    args = parser.parse_args(argv)
    merge = parse_pairs(args.merge, "--merge")
    names = dict(item.split("=", 1) for item in args.names.split(",") if "=" in item)
    fields = {key: int(value) if value.isdigit() else value
              for key, value in (item.split("=", 1) for item in args.field if "=" in item)}
    images = len(list((args.pred_dir / "label").glob("*.png")))
    for stage, scores in stage_scores(args.pred_dir, args.truth_dir, merge).items():
        iou = {names.get(str(c), str(c)): None if np.isnan(v) else round(float(v), 4) for c, v in enumerate(scores["iou"])
               if c not in merge}
        line = {**fields, "stage": stage, "images": images, "miou": round(scores["miou"], 4),
                "fiou": round(scores["fiou"], 4), "pixel_accuracy": round(scores["pixel_accuracy"], 4), "iou": iou}
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
