"""Readers for array-file formats (PanNuke folds, CoNIC), memory-mapped one row at a time.

Each row access maps the ``.npy`` with ``mmap_mode='r'``, copies that row and unmaps it, so
iterating a whole fold keeps resident memory to a few rows whatever the file size.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from loader.readers.core import Arrays, Record
from loader.readers.files import as_label, as_uint8_image, require_dir
from misc.errors import UserError
from misc.io import as_rgb

PANNUKE_CLASSES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
PANNUKE_MPP = 0.25  # PanNuke patches are 40x
CONIC_CLASSES = ("neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective")
CONIC_MPP = 0.5  # CoNIC/Lizard is 20x
_FOLD = re.compile(r"fold\s*_?(\d+)", re.IGNORECASE)


def npy_rows(path: Path) -> tuple[int, ...]:
    """Shape of an ``.npy`` file, read from its header only."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot be opened as a .npy array ({err})") from None
    shape = array.shape
    del array
    return shape


def npy_row(path: Path, index: int) -> np.ndarray:
    """Copy of ``array[index]`` of an ``.npy`` file, mapped with ``mmap_mode='r'`` only for the copy."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    row = np.array(array[index])
    del array
    return row


def pannuke_inst_type(masks: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """PanNuke (256, 256, 6) mask -> instance and type maps.

    Channels 0-4 hold instance ids of the five types, channel 5 background. Ids are unique
    only within a channel, so each (channel, id) pair is its own instance; instances are
    numbered 1..N in (channel, id) order and get type ``channel + 1``. Where channels overlap
    the higher channel wins.

    Returns:
        ``(inst_map, type_map)``: (H, W) int32 each.
    """
    if masks.ndim != 3 or masks.shape[2] != 6:
        raise UserError(f"{source}: PanNuke mask shape {masks.shape} is not (H, W, 6)")
    channels = masks[..., :5]
    if channels.dtype.kind == "f" and not np.array_equal(channels, np.round(channels)):
        raise UserError(f"{source}: PanNuke mask holds non-integer ids")
    ids = channels.astype(np.int64).reshape(-1, 5)
    if ids.size and ids.min() < 0:
        raise UserError(f"{source}: PanNuke mask holds negative ids")
    present = ids > 0
    foreground = np.flatnonzero(present.any(axis=1))
    top = 4 - np.argmax(present[foreground, ::-1], axis=1)
    keys = (top.astype(np.int64) << 32) + ids[foreground, top]
    inverse = np.unique(keys, return_inverse=True)[1]
    inst_map = np.zeros(masks.shape[:2], dtype=np.int32)
    type_map = np.zeros(masks.shape[:2], dtype=np.int32)
    inst_map.flat[foreground] = inverse + 1
    type_map.flat[foreground] = top + 1
    return inst_map, type_map


def _pannuke_folds(root: Path) -> dict[str, dict[str, Path]]:
    """``{fold name: {'images'|'masks'|'types': path}}`` found under ``root`` (up to 4 levels).

    The fold name is the first ``fold<N>`` in the file's path below ``root`` (``''`` when
    ``root`` is itself one fold).
    """
    folds: dict[str, dict[str, Path]] = {}
    for depth in range(5):
        for path in sorted(root.glob("/".join(["*"] * depth + ["*.npy"]))):
            if path.stem not in ("images", "masks", "types"):
                continue
            match = _FOLD.search(str(path.relative_to(root).parent)) or _FOLD.search(root.name)
            fold = f"fold{match.group(1)}" if match else ""
            folds.setdefault(fold, {}).setdefault(path.stem, path)
    return folds


def read_pannuke(root: Path, split: str | None, *, allow_grey: bool = False) -> list[Record]:
    """PanNuke folds: ``images.npy`` (N,256,256,3), ``masks.npy`` (N,256,256,6), ``types.npy`` (N,).

    Works on the official layout (``Fold 1/images/fold1/images.npy`` ...) or any folder
    tree naming folds ``fold<N>``; splits are the fold names. ``.tissue`` is ``types.npy``.
    """
    folds = _pannuke_folds(require_dir(root, "PanNuke fold folders"))
    if not folds:
        raise UserError(f"{root}: no PanNuke images.npy/masks.npy/types.npy found")
    if split is not None:
        if split not in folds:
            raise UserError(f"{root}: no PanNuke fold '{split}' (found {sorted(folds)})")
        folds = {split: folds[split]}
    records = []
    for fold, files in sorted(folds.items()):
        missing = [k for k in ("images", "masks", "types") if k not in files]
        if missing:
            raise UserError(f"{root}: PanNuke fold '{fold or root.name}' lacks {[m + '.npy' for m in missing]}")
        count = npy_rows(files["images"])[0]
        mask_shape = npy_rows(files["masks"])
        if mask_shape[0] != count or len(mask_shape) != 4 or mask_shape[3] != 6:
            raise UserError(f"{files['masks']}: shape {mask_shape}; expected ({count}, H, W, 6) to match {files['images']}")
        tissues = np.load(files["types"], allow_pickle=False)
        if tissues.shape != (count,):
            raise UserError(f"{files['types']}: shape {tissues.shape}; expected ({count},)")
        for index in range(count):

            def load(index: int = index, files: dict[str, Path] = files) -> Arrays:
                image = as_rgb(as_uint8_image(npy_row(files["images"], index), files["images"]), files["images"], allow_grey)
                inst_map, type_map = pannuke_inst_type(npy_row(files["masks"], index), f"{files['masks']}[{index}]")
                return Arrays(image, inst_map, type_map)

            name = f"{fold}_{index:05d}" if fold else f"{index:05d}"
            records.append(
                Record(name, files["images"], load, PANNUKE_MPP, tissue=str(tissues[index]), class_names=PANNUKE_CLASSES)
            )
    return records


def _csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise UserError(f"{path}: not found (CoNIC needs images.npy, labels.npy, counts.csv, patch_info.csv)")
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def read_conic(root: Path, split: str | None, *, allow_grey: bool = False) -> list[Record]:
    """CoNIC: ``images.npy`` (N,256,256,3 uint8), ``labels.npy`` (N,256,256,2: inst, type),
    ``counts.csv`` (per-class counts, exposed as ``meta['counts']``) and ``patch_info.csv``
    (names ``<source image>-<patch>``; the source image becomes ``.group``, its prefix
    before ``_`` ``meta['cohort']``). 20x, 0.5 µm/px.
    """
    if split is not None:
        raise UserError(f"conic has no native splits; got '{split}' (use a split file from loader.splits)")
    require_dir(root, "CoNIC arrays")
    images, labels = root / "images.npy", root / "labels.npy"
    infos = _csv_rows(root / "patch_info.csv")
    counts = _csv_rows(root / "counts.csv")
    count = npy_rows(images)[0] if images.is_file() else None
    if count is None or not labels.is_file():
        raise UserError(f"{root}: images.npy and labels.npy are both required")
    label_shape = npy_rows(labels)
    if label_shape[0] != count or len(label_shape) != 4 or label_shape[3] != 2:
        raise UserError(f"{labels}: shape {label_shape}; expected ({count}, H, W, 2) to match {images}")
    if len(infos) != count or len(counts) != count:
        raise UserError(f"{root}: patch_info.csv has {len(infos)} rows, counts.csv {len(counts)}, images.npy {count}; they must agree")
    records = []
    for index, (info, count_row) in enumerate(zip(infos, counts)):
        name = next(iter(info.values())).strip()
        source_image = name.rsplit("-", 1)[0]

        def load(index: int = index) -> Arrays:
            image = as_rgb(as_uint8_image(npy_row(images, index), images), images, allow_grey)
            label = npy_row(labels, index)
            inst_map = as_label(label[..., 0], f"{labels}[{index}]", "instance channel")
            type_map = as_label(label[..., 1], f"{labels}[{index}]", "type channel")
            return Arrays(image, inst_map, type_map)

        meta = {"counts": {k: int(float(v)) for k, v in count_row.items()}, "cohort": source_image.split("_")[0]}
        records.append(Record(name, images, load, CONIC_MPP, class_names=CONIC_CLASSES, group=source_image, meta=meta))
    return records
