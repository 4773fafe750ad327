"""Helpers for file-per-image formats: layout discovery, pairing by stem, shape checks, .mat reading."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from misc.errors import UserError
from misc.io import IMAGE_EXTENSIONS


def require_dir(path: Path, what: str) -> Path:
    """``path`` when it is a folder, else a UserError naming it and ``what`` it should hold."""
    if not path.is_dir():
        raise UserError(f"{path}: no such folder (expected {what})")
    return path


def child_dir(parent: Path, name: str) -> Path | None:
    """The sub-folder of ``parent`` called ``name``, compared case-insensitively, or None."""
    if not parent.is_dir():
        return None
    exact = parent / name
    if exact.is_dir():
        return exact
    for child in sorted(parent.iterdir()):
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    return None


def split_roots(root: Path, split: str | None, native: Sequence[str]) -> list[tuple[str | None, Path]]:
    """Folders to read for ``split``: ``root/<split>`` when given, else every ``root/<native>``
    present, else ``root`` itself. Returns ``(split name or None, folder)`` pairs."""
    require_dir(root, "the dataset root")
    if split is not None:
        folder = child_dir(root, split)
        if folder is None:
            raise UserError(f"{root}: no '{split}' sub-folder for split '{split}'")
        return [(split, folder)]
    present = [(name, child_dir(root, name)) for name in native]
    found = [(name, folder) for name, folder in present if folder is not None]
    return found or [(None, root)]


def files_with_suffix(folder: Path, suffixes: Iterable[str], exclude: str | None = None) -> list[Path]:
    """Files in ``folder`` (not recursive) whose lower-case suffix is in ``suffixes``, sorted by name."""
    suffixes = tuple(s.lower() for s in suffixes)
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in suffixes and not (exclude and p.stem.endswith(exclude))
    )


def image_files(folder: Path, exclude: str | None = None) -> list[Path]:
    """Image files (``misc.io.IMAGE_EXTENSIONS``) in ``folder``, sorted; UserError when none."""
    found = files_with_suffix(require_dir(folder, "images"), IMAGE_EXTENSIONS, exclude)
    if not found:
        raise UserError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return found


def match_by_stem(images: Sequence[Path], folder: Path, suffixes: Sequence[str], what: str, optional: bool = False) -> list[Path | None]:
    """For each image, the file in ``folder`` with the same stem and one of ``suffixes``.

    Raises:
        UserError: an image has no partner (unless ``optional``), naming the image and folder.
    """
    by_stem: dict[str, Path] = {}
    lowered = tuple(s.lower() for s in suffixes)
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        for suffix in lowered:
            if path.name.lower().endswith(suffix):
                by_stem.setdefault(path.name[: len(path.name) - len(suffix)], path)
    matched: list[Path | None] = []
    for image in images:
        partner = by_stem.get(image.stem)
        if partner is None and not optional:
            raise UserError(f"{image}: no {what} '{image.stem}{{{','.join(suffixes)}}}' in {folder}")
        matched.append(partner)
    return matched


def check_shape(label: np.ndarray, image: np.ndarray, label_path: str | os.PathLike, image_path: str | os.PathLike) -> None:
    """UserError naming both files when the label's (H, W) differs from the image's."""
    if label.shape[:2] != image.shape[:2]:
        raise UserError(
            f"{label_path}: label shape {label.shape[:2]} differs from image {image_path} shape {image.shape[:2]}"
        )


def load_mat(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Variables ``keys`` of a MATLAB file (v5 via scipy, v7.3 via h5py, transposed back).

    Raises:
        UserError: the file is unreadable or lacks a key (names the keys it has).
    """
    if not path.is_file():
        raise UserError(f"{path}: no such .mat file")
    try:
        import scipy.io

        content = {k: np.asarray(v) for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    except NotImplementedError:  # MATLAB v7.3 = HDF5
        import h5py

        with h5py.File(path, "r") as handle:
            content = {k: np.asarray(handle[k]).T for k in handle.keys() if isinstance(handle[k], h5py.Dataset)}
    except Exception as err:
        raise UserError(f"{path}: cannot be read as a .mat file ({type(err).__name__}: {err})") from None
    missing = [k for k in keys if k not in content]
    if missing:
        raise UserError(f"{path}: no variable(s) {missing} in .mat file (has {sorted(content)})")
    return {k: content[k] for k in keys}


def as_label(array: np.ndarray, source: str | os.PathLike, what: str = "label map") -> np.ndarray:
    """(H, W) integer-valued array -> int32, refusing fractions, negatives and non-2-D shapes."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise UserError(f"{source}: {what} shape {array.shape} is not (H, W)")
    if array.dtype.kind == "f" and (not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array))):
        raise UserError(f"{source}: {what} holds non-integer values")
    if array.dtype.kind not in "fiub":
        raise UserError(f"{source}: {what} dtype {array.dtype} is not numeric")
    if array.size and (array.min() < 0 or array.max() > np.iinfo(np.int32).max):
        raise UserError(f"{source}: {what} ids must be 0..2^31-1")
    return array.astype(np.int32)


def as_uint8_image(array: np.ndarray, source: str | os.PathLike) -> np.ndarray:
    """Float arrays holding whole numbers 0..255 (as PanNuke stores them) -> uint8; others unchanged."""
    array = np.asarray(array)
    if array.dtype.kind != "f":
        return array
    if not np.array_equal(array, np.round(array)) or array.min(initial=0) < 0 or array.max(initial=0) > 255:
        raise UserError(f"{source}: float image holds values other than whole numbers 0..255")
    return array.astype(np.uint8)
