"""Reader for patch-level (weak) labels: one sub-folder per class, or a CSV of 0/1 columns."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from loader.readers.core import Arrays, Record
from loader.readers.files import child_dir, image_files, require_dir, split_roots
from misc.errors import UserError
from misc.io import IMAGE_EXTENSIONS, read_image


def _csv_labels(csv_path: Path) -> tuple[tuple[str, ...], list[tuple[str, np.ndarray]]]:
    """Class names and ``(name, multi-hot (C,) int64)`` rows of a ``name,<class...>`` CSV."""
    with csv_path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or len(rows[0]) < 2:
        raise UserError(f"{csv_path}: expected a header 'name,<class>,...' with at least one class column")
    class_names = tuple(c.strip() for c in rows[0][1:])
    parsed = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        values = [v.strip() for v in row[1:]]
        if len(values) != len(class_names):
            raise UserError(f"{csv_path}:{line}: expected {len(class_names)} columns of 0/1 after the name, got {row[1:]}")
        bad = [(name, value) for name, value in zip(class_names, values) if value not in ("0", "1")]
        if bad:
            raise UserError(f"{csv_path}:{line}: row '{row[0].strip()}', column '{bad[0][0]}' is '{bad[0][1]}'; "
                            "expected 0 or 1")
        parsed.append((row[0].strip(), np.array([int(v) for v in values], dtype=np.int64)))
    return class_names, parsed


def _find_image(folder: Path, name: str, csv_path: Path) -> Path:
    direct = folder / name
    if direct.suffix.lower() in IMAGE_EXTENSIONS and direct.is_file():
        return direct
    for suffix in IMAGE_EXTENSIONS:
        candidate = folder / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    raise UserError(f"{csv_path}: no image '{name}' (any of {', '.join(IMAGE_EXTENSIONS)}) in {folder}")


def _records(
    entries: list[tuple[str, Path, np.ndarray]], class_names: tuple[str, ...], allow_grey: bool
) -> list[Record]:
    records = []
    for name, image_path, labels in entries:

        def load(image_path: Path = image_path, labels: np.ndarray = labels) -> Arrays:
            return Arrays(read_image(image_path, allow_grey), labels=labels.copy())

        records.append(Record(name, image_path, load, class_names=class_names))
    return records


def read_patch_labels(
    root: Path,
    split: str | None,
    *,
    allow_grey: bool = False,
    csv_file: str | None = None,
    images: str = "images",
) -> list[Record]:
    """Patches with multi-hot labels; ``.inst_map``/``.type_map`` are None.

    With a CSV (``csv_file``, or the only ``*.csv`` in the folder): rows ``name,<0/1 per class>``,
    images in ``images/`` (or beside the CSV), ``name`` with or without extension.
    Otherwise each sub-folder is a class (sorted names) and each image in it a one-hot patch
    named ``<class>/<stem>``.
    """
    records = []
    for part, folder in split_roots(root, split, ()):
        csvs = [folder / csv_file] if csv_file else sorted(folder.glob("*.csv"))
        if len(csvs) > 1:
            raise UserError(f"{folder}: several CSV files {[c.name for c in csvs]}; choose one with csv_file=")
        if csvs:
            if not csvs[0].is_file():
                raise UserError(f"{csvs[0]}: label CSV not found")
            class_names, rows = _csv_labels(csvs[0])
            image_dir = child_dir(folder, images) or folder
            entries = [(name, _find_image(image_dir, name, csvs[0]), labels) for name, labels in rows]
        else:
            class_dirs = sorted(p for p in require_dir(folder, "class sub-folders").iterdir() if p.is_dir())
            if not class_dirs:
                raise UserError(f"{folder}: no class sub-folders and no label CSV")
            class_names = tuple(d.name for d in class_dirs)
            eye = np.eye(len(class_dirs), dtype=np.int64)
            entries = [(f"{d.name}/{p.stem}", p, eye[k]) for k, d in enumerate(class_dirs) for p in image_files(d)]
        records += _records(entries, class_names, allow_grey)
    return records
