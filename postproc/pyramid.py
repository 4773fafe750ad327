"""Pyramidal tiled TIFF writer for slide-sized overlays and class maps.

The file is what OpenSlide reads as ``generic-tiff`` (and so QuPath, through OpenSlide, and
tifffile): the full-resolution image in the first page, then pages halved in size until the
longer side fits one tile, marked ``SubFileType = 1`` (reduced image); every page tiled,
deflate-compressed, with its pixel size in the resolution tags (pixels per centimetre).

The image is any array-like that slices as ``image[y0:y1, x0:x1]`` (a numpy array, an
``h5py`` dataset): the levels are built band by band in a scratch HDF5 file beside the output
and written tile by tile, so memory holds one band whatever the image size.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from misc.errors import UserError
from misc.io import atomic_path

BAND_ROWS = 512


def _halve(band: np.ndarray, labels: bool) -> np.ndarray:
    """(h, w, C) -> (ceil(h / 2), ceil(w / 2), C): area average, or every other pixel for labels."""
    if labels:
        return band[::2, ::2]
    height, width = band.shape[:2]
    if height % 2 or width % 2:
        band = np.pad(band, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    small = cv2.resize(band, (band.shape[1] // 2, band.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return small.reshape(band.shape[0] // 2, band.shape[1] // 2, band.shape[2])


def _tiles(level: Any, tile: int) -> Iterator[np.ndarray]:
    """Row-major (tile, tile, C) tiles of ``level``, edge tiles zero-padded."""
    height, width, channels = level.shape
    for y in range(0, height, tile):
        band = np.asarray(level[y : y + tile])
        for x in range(0, width, tile):
            piece = band[:, x : x + tile]
            if piece.shape[:2] != (tile, tile):
                piece = np.pad(piece, ((0, tile - piece.shape[0]), (0, tile - piece.shape[1]), (0, 0)))
            yield np.ascontiguousarray(piece if channels > 1 else piece[..., 0])


def write_pyramid_tiff(path: str | os.PathLike, image: Any, mpp: float, tile: int = 256, labels: bool = False) -> Path:
    """Write ``image`` as a pyramidal tiled TIFF, atomically.

    Args:
        path: the ``.tif`` to write.
        image: (H, W, C) uint8 array-like, C = 1 (grey or class ids) or 3 (RGB).
        mpp: µm per pixel of ``image``.
        tile: tile side in pixels (multiple of 16).
        labels: class ids (levels subsample instead of averaging).

    Returns:
        ``path``.
    """
    import h5py
    import tifffile

    if len(image.shape) != 3 or image.shape[2] not in (1, 3) or np.dtype(image.dtype) != np.uint8:
        raise UserError(f"pyramid TIFF: image must be (H, W, 1 or 3) uint8, got {image.shape} {image.dtype}")
    if tile % 16 or tile < 16:
        raise UserError(f"pyramid TIFF: tile {tile} must be a multiple of 16")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    photometric = "rgb" if image.shape[2] == 3 else "minisblack"
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.levels-") as scratch, \
            h5py.File(Path(scratch) / "levels.h5", "w") as store, atomic_path(path) as tmp, \
            tifffile.TiffWriter(tmp, bigtiff=image.shape[0] * image.shape[1] * image.shape[2] > 2**31) as tif:
        level, index = image, 0
        while True:
            per_cm = 1e4 / (mpp * 2**index)
            shape = tuple(level.shape) if level.shape[2] > 1 else tuple(level.shape[:2])
            tif.write(_tiles(level, tile), shape=shape, dtype=np.uint8, tile=(tile, tile),
                      photometric=photometric, compression="zlib", subfiletype=1 if index else 0,
                      resolution=(per_cm, per_cm), resolutionunit="CENTIMETER", metadata=None)
            if max(level.shape[:2]) <= tile:
                break
            level, index = _next_level(store, level, index + 1, labels), index + 1
    return path


def _next_level(store: Any, level: Any, index: int, labels: bool) -> Any:
    """Level ``index`` (half of ``level``) as a dataset of ``store``, built band by band."""
    height, width, channels = level.shape
    shape = (math.ceil(height / 2), math.ceil(width / 2), channels)
    target = store.create_dataset(f"level{index}", shape=shape, dtype=np.uint8,
                                  chunks=(min(shape[0], 256), min(shape[1], 256), channels))
    for y in range(0, height, 2 * BAND_ROWS):
        band = np.asarray(level[y : y + 2 * BAND_ROWS])
        target[y // 2 : y // 2 + math.ceil(band.shape[0] / 2)] = _halve(band, labels)
    return target
