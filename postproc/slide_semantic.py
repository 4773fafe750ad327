"""A slide's semantic class map as files QuPath and OpenSlide open.

:func:`write_slide_classes` takes one (h, w) class map covering a whole slide at a known
downsample from level 0 (e.g. a tissue-type map at 2 µm/px of a 0.25 µm/px slide:
downsample 8) and writes, each atomically, into a folder:

- ``<stem>.classes.tif``: the class colours as a pyramidal tiled RGB TIFF
  (:func:`postproc.pyramid.write_pyramid_tiff`; reduced levels subsample, so every pixel
  keeps a class colour), its pixel size ``slide_mpp x downsample`` in the resolution tags;
- ``<stem>.probability.tif`` (with a probability map): the probability as a grey pyramid
  (0-255 for 0-1), same geometry;
- ``<stem>.classes.geojson``: one QuPath ``annotation`` feature per class present, a
  MultiPolygon with holes along the pixel edges (:func:`postproc.semantic.class_polygons`)
  in level-0 pixel-corner coordinates (map corner (x, y) is level-0 point (x d, y d));
  ``measurements`` ``area_px`` (level-0 pixels) and ``area_mm2``;
- ``<stem>.areas.csv``: ``class_id, class, pixels, level0_pixels, area_mm2`` per class of
  the class info (``pixels`` at the map's resolution).

Memory: the coloured and grey pyramids are built band by band; the GeoJSON needs the map, one
boolean class mask and its int32 labelling at a time: about 6 bytes per map pixel for a uint8 map.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from misc.errors import UserError
from misc.io import atomic_write
from postproc.formats import TypeInfo
from postproc.pyramid import write_pyramid_tiff
from postproc.semantic import check_class_ids, class_polygons, generic_class_info

SUFFIXES = {"classes": ".classes.tif", "probability": ".probability.tif", "geojson": ".classes.geojson",
            "areas": ".areas.csv"}
AREA_COLUMNS = ("class_id", "class", "pixels", "level0_pixels", "area_mm2")


class _Coloured:
    """Row-sliceable (h, w, 3) uint8 view of a class map in its class colours (for the pyramid writer)."""

    def __init__(self, class_map: np.ndarray, class_info: TypeInfo) -> None:
        self.class_map = class_map
        size = max(class_info) + 1
        self.lookup = np.zeros((size, 3), np.uint8)
        for class_id, (_, colour) in class_info.items():
            self.lookup[class_id] = colour
        self.shape = (*class_map.shape, 3)
        self.dtype = np.dtype(np.uint8)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.lookup[np.asarray(self.class_map[rows], np.int64)]


class _Grey:
    """Row-sliceable (h, w, 1) uint8 view of a probability map in [0, 1] (0-255)."""

    def __init__(self, prob: np.ndarray) -> None:
        self.prob = prob
        self.shape = (*prob.shape, 1)
        self.dtype = np.dtype(np.uint8)

    def __getitem__(self, rows: slice) -> np.ndarray:
        values = np.asarray(self.prob[rows], np.float32)
        return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)[..., None]


def class_counts(class_map: np.ndarray, class_info: TypeInfo) -> np.ndarray:
    """(max id + 1,) int64 pixel count of every class id of ``class_info`` in the map (one
    boolean mask at a time, so a uint8 map is never widened)."""
    counts = np.zeros(max(class_info) + 1, np.int64)
    for class_id in class_info:
        counts[class_id] = np.count_nonzero(class_map == class_id)
    return counts


def area_rows(counts: np.ndarray, class_info: TypeInfo, downsample: float, slide_mpp: float) -> list[dict[str, Any]]:
    """Rows of ``<stem>.areas.csv``: per class of ``class_info`` (sorted by id) its ``pixels``
    in the map, ``level0_pixels`` (pixels x downsample²) and ``area_mm2`` (x slide_mpp² / 1e6)."""
    rows = []
    for class_id, (name, _) in sorted(class_info.items()):
        pixels = int(counts[class_id]) if class_id < len(counts) else 0
        level0 = pixels * float(downsample) ** 2
        rows.append({"class_id": class_id, "class": name, "pixels": pixels, "level0_pixels": level0,
                     "area_mm2": level0 * float(slide_mpp) ** 2 / 1e6})
    return rows


def slide_class_geojson(class_map: np.ndarray, class_info: TypeInfo, downsample: float, slide_mpp: float) -> dict:
    """FeatureCollection of one QuPath ``annotation`` per class present (see the module docstring)."""
    counts = class_counts(class_map, class_info)
    features = []
    for row in area_rows(counts, class_info, downsample, slide_mpp):
        if row["pixels"] == 0:
            continue
        polygons = class_polygons(np.asarray(class_map) == row["class_id"])
        coordinates = [[(np.asarray(ring) * float(downsample)).tolist() for ring in polygon] for polygon in polygons]
        features.append({
            "type": "Feature",
            "id": str(row["class_id"]),
            "geometry": {"type": "MultiPolygon", "coordinates": coordinates},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": row["class"], "color": list(class_info[row["class_id"]][1])},
                "measurements": {"area_px": row["level0_pixels"], "area_mm2": row["area_mm2"]},
            },
        })
    return {"type": "FeatureCollection", "features": features}


def _check(class_map: np.ndarray, downsample: float, slide_mpp: float, prob: np.ndarray | None) -> None:
    if class_map.ndim != 2 or not class_map.size or not np.issubdtype(class_map.dtype, np.integer):
        raise UserError(f"slide class map must be (h, w) integer class ids, got {class_map.shape} {class_map.dtype}")
    if class_map.size and class_map.min() < 0:
        raise UserError(f"slide class map holds negative class id {int(class_map.min())}")
    if not (downsample > 0 and slide_mpp > 0):
        raise UserError(f"slide class map: downsample and slide µm/px must be > 0, got {downsample}, {slide_mpp}")
    if prob is not None and tuple(prob.shape) != class_map.shape:
        raise UserError(f"slide probability map is {tuple(prob.shape)}; expected the class map's {class_map.shape}")


def write_slide_classes(
    out_dir: str | os.PathLike,
    stem: str,
    class_map: np.ndarray,
    downsample: float,
    class_info: TypeInfo | None,
    slide_mpp: float,
    prob: np.ndarray | None = None,
    tile: int = 256,
) -> dict[str, Any]:
    """Write a slide's class map as a pyramidal TIFF, QuPath GeoJSON annotations and areas.

    Args:
        out_dir: the folder written into (made if missing).
        stem: file-name stem (the slide's).
        class_map: (h, w) integer class ids covering the slide; pixel (x, y) covers level-0
            [x d, (x + 1) d) x [y d, (y + 1) d) for ``d = downsample``.
        downsample: level-0 pixels per map pixel (float, > 0).
        class_info: ``{class id: (name, (r, g, b))}`` (``type_info.json`` layout); None:
            ``class N`` names and palette colours for the ids present.
        slide_mpp: µm per level-0 pixel.
        prob: optional (h, w) float probability in [0, 1] (of each pixel's class, or of one
            class of interest), array-like sliceable by rows (e.g. an ``h5py`` dataset).
        tile: TIFF tile side (multiple of 16).

    Returns:
        ``{'files': {kind: Path}, 'areas': area rows (:func:`area_rows`), 'class_mpp': µm/px
        of the map}``; ``kind`` in ``classes``, ``probability`` (with ``prob``), ``geojson``, ``areas``.

    Raises:
        UserError: a map that is not (h, w) integers, ids outside ``class_info``, a
            probability map of another shape, or a non-positive downsample or pixel size.
    """
    class_map = np.asarray(class_map)
    _check(class_map, downsample, slide_mpp, prob)
    if class_info is None:
        class_info = generic_class_info(class_map)
    else:
        check_class_ids(class_map, class_info, f"slide class map of {stem}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {kind: out / f"{stem}{suffix}" for kind, suffix in SUFFIXES.items() if kind != "probability" or prob is not None}
    class_mpp = float(slide_mpp) * float(downsample)
    write_pyramid_tiff(files["classes"], _Coloured(class_map, class_info), mpp=class_mpp, tile=tile, labels=True)
    if prob is not None:
        write_pyramid_tiff(files["probability"], _Grey(prob), mpp=class_mpp, tile=tile)
    with atomic_write(files["geojson"], "w") as handle:
        json.dump(slide_class_geojson(class_map, class_info, downsample, slide_mpp), handle)
    rows = area_rows(class_counts(class_map, class_info), class_info, downsample, slide_mpp)
    with atomic_write(files["areas"], "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=AREA_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return {"files": files, "areas": rows, "class_mpp": class_mpp}
