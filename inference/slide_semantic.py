"""Semantic families on whole slides: class maps per processing tile, assembled at a reduced
resolution and written by :func:`postproc.slide_semantic.write_slide_classes`.

Each processing tile's stitched maps (its core plus a margin, at the network's resolution)
go through the family's ``postprocess``; of the resulting class map only the tile's core is
kept. A tile keeps, in its ``.work/tiles/<row>_<col>.npz``:

- ``class_ids``, ``class_counts``: the pixels of each class in the core at the network's
  resolution (exact areas for the summary);
- ``classes``: the core reduced ``factor`` times by a majority vote over each ``factor`` x
  ``factor`` block (ties: the smaller id), (ceil(h / f), ceil(w / f)) int32;
- ``confidence`` (when ``postprocess`` returns one): the block means of the (H, W) probability
  of each pixel's class, float32.

The reduced pieces are put together in an HDF5 scratch file; where no tile ran (no tissue)
the map holds class 0 and confidence 0.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from misc.errors import UserError
from postproc.formats import TypeInfo
from postproc.semantic import check_class_ids


def block_majority(class_map: np.ndarray, factor: int) -> np.ndarray:
    """(h, w) int class map -> (ceil(h / f), ceil(w / f)) int32 most frequent id of each block
    (edge blocks count their pixels inside the map; ties go to the smaller id)."""
    height, width = class_map.shape
    rows, cols = math.ceil(height / factor), math.ceil(width / factor)
    ids = np.unique(class_map)
    if len(ids) == 1:
        return np.full((rows, cols), ids[0], np.int32)
    if factor == 1:
        return class_map.astype(np.int32)
    padded = np.full((rows * factor, cols * factor), -1, np.int64)
    padded[:height, :width] = class_map
    blocks = padded.reshape(rows, factor, cols, factor)
    votes = np.stack([(blocks == class_id).sum(axis=(1, 3)) for class_id in ids])
    return ids[np.argmax(votes, axis=0)].astype(np.int32)


def block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """(h, w) float -> (ceil(h / f), ceil(w / f)) float32 mean of each block's pixels inside the map."""
    height, width = values.shape
    rows, cols = math.ceil(height / factor), math.ceil(width / factor)
    padded = np.zeros((rows * factor, cols * factor), np.float64)
    padded[:height, :width] = values
    inside = np.zeros_like(padded)
    inside[:height, :width] = 1.0
    sums = padded.reshape(rows, factor, cols, factor).sum(axis=(1, 3))
    return (sums / inside.reshape(rows, factor, cols, factor).sum(axis=(1, 3))).astype(np.float32)


def process_semantic_tile(family: Any, raw: dict[str, np.ndarray], extended: tuple[int, int, int, int],
                          core: tuple[int, int, int, int], mag: float, factor: int,
                          class_info: TypeInfo | None) -> dict[str, np.ndarray]:
    """Post-process one tile's maps into its core's class counts and reduced class map.

    Args:
        family: a semantic family (``postprocess`` returns ``class_map`` (H, W) int and,
            optionally, ``confidence`` (H, W) float in [0, 1]).
        raw: named (h, w, C) float32 maps of the extended box.
        extended, core: ``(r0, r1, c0, c1)`` boxes at the network's resolution.
        mag: the magnification post-processing constants scale to.
        factor: reduction of the stored class map (a power of two dividing the tile side).
        class_info: the classes the map may hold (None: any id >= 0).

    Returns:
        The arrays of the module docstring.

    Raises:
        UserError: a class map not at the maps' pixels, or ids outside ``class_info``.
    """
    result = family.postprocess(raw, mag=mag)
    class_map = np.asarray(result["class_map"])
    shape = next(iter(raw.values())).shape[:2]
    if class_map.shape != shape:
        raise UserError(f"family '{family.name}' returned a {class_map.shape} class map for {shape} maps; "
                        "slides need one class per pixel")
    top, left = extended[0], extended[2]
    local = (slice(core[0] - top, core[1] - top), slice(core[2] - left, core[3] - left))
    kept = class_map[local]
    if class_info is not None:
        check_class_ids(kept, class_info, f"the class map of family '{family.name}'")
    ids, counts = np.unique(kept, return_counts=True)
    arrays = {"class_ids": ids.astype(np.int64), "class_counts": counts.astype(np.int64),
              "classes": block_majority(kept, factor)}
    if result.get("confidence") is not None:
        arrays["confidence"] = block_mean(np.asarray(result["confidence"], np.float64)[local], factor)
    return arrays


def class_pixels(tile_paths: list[Path]) -> dict[int, int]:
    """Pixels per class id over the tiles' cores, at the network's resolution."""
    totals: dict[int, int] = {}
    for path in tile_paths:
        with np.load(path, allow_pickle=False) as data:
            for class_id, count in zip(data["class_ids"].tolist(), data["class_counts"].tolist()):
                totals[class_id] = totals.get(class_id, 0) + count
    return dict(sorted(totals.items()))


def assemble_classes(path: Path, tiles: list[tuple[Path, tuple[int, int, int, int]]], shape: tuple[int, int],
                     factor: int, max_id: int) -> Any:
    """The reduced class map (dataset ``classes``: uint8 when ``max_id`` < 256, else int32) and,
    when the tiles hold one, the confidence (``confidence``, float32) of the whole slide in an
    HDF5 file at ``path``."""
    import h5py

    height, width = math.ceil(shape[0] / factor), math.ceil(shape[1] / factor)
    chunks = (min(height, 256), min(width, 256))
    store = h5py.File(path, "w")
    dtype = np.uint8 if max_id < 256 else np.int32
    classes = store.create_dataset("classes", shape=(height, width), dtype=dtype, fillvalue=0, chunks=chunks)
    for tile_path, core in tiles:
        with np.load(tile_path, allow_pickle=False) as data:
            y, x = core[0] // factor, core[2] // factor
            piece = data["classes"]
            classes[y : y + piece.shape[0], x : x + piece.shape[1]] = piece
            if "confidence" in data.files:
                if "confidence" not in store:
                    store.create_dataset("confidence", shape=(height, width), dtype=np.float32, fillvalue=0,
                                         chunks=chunks)
                store["confidence"][y : y + piece.shape[0], x : x + piece.shape[1]] = data["confidence"]
    return store
