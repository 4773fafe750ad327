"""Command line: score a folder of predicted label maps against a folder of true ones.

``python -m metrics --true DIR --pred DIR [--types N] [--radius 12] [--count-crop 224]
[--gland] [--out FILE]``
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np

from metrics.aggregate import mean_rows
from metrics.scoring import LabelPair, print_table, score_pairs, write_results
from misc.errors import UserError, cli_main
from misc.io import LABEL_EXTENSIONS, read_label, read_label_stack


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

