"""Slides of a family that infers them itself (``Family.infer_slide``, :func:`run_family_slide`):
the class map it returns as a pyramidal TIFF, QuPath GeoJSON annotations and per-class areas
(:func:`write_slide_class_map`), a raw file for ``process.py``, pictures and a summary.

A class map covers the whole slide at ``downsample`` level-0 pixels per pixel: map pixel
(r, c) covers level-0 [c d, (c + 1) d) x [r d, (r + 1) d). Files written into the slide's
output folder ``OUT/<stem>/``:

- ``<stem>.classes.tif``: class ids (uint8), pyramidal (:func:`postproc.pyramid.write_pyramid_tiff`),
  at ``tiff_downsample`` (the class map upsampled by nearest neighbours, band by band);
- ``<stem>.geojson``: one QuPath ``annotation`` feature per class present (background, id 0,
  left out): a MultiPolygon along the class map's pixel edges, holes included, in level-0
  pixel-corner coordinates, with its area in µm² and mm²;
- families that infer slides themselves also get ``<stem>.npz`` (a raw file ``process.py``
  reads: the family's maps, its config and the slide geometry), ``<stem>.<picture>.png``
  (e.g. a heatmap), ``<stem>.thumbnail.png`` (classes over the slide) and ``<stem>.summary.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inference.rawfile import meta_arrays, write_npz
from loader.slide import Slide
from loader.tissue import load_mask, mask_mpp_for
from misc.errors import UserError
from misc.io import atomic_path, atomic_write, write_image
from models.base import SlideMaps
from postproc.pyramid import write_pyramid_tiff
from postproc.semantic import class_polygons, colour_overlay

SUFFIXES = {"classes": ".classes.tif", "geojson": ".geojson", "raw": ".npz", "thumbnail": ".thumbnail.png",
            "summary": ".summary.json"}


class NearestUpsampled:
    """An (h, w) class map seen as its (H, W, 1) uint8 upsampling by nearest neighbours to
    ``shape``, read in row bands (``view[y0:y1]``), as :func:`postproc.pyramid.write_pyramid_tiff` reads."""

    def __init__(self, class_map: np.ndarray, shape: tuple[int, int]) -> None:
        self.class_map = np.asarray(class_map, np.uint8)
        self.shape = (int(shape[0]), int(shape[1]), 1)
        self.dtype = np.dtype(np.uint8)
        self._cols = np.minimum((np.arange(shape[1]) + 0.5) * self.class_map.shape[1] / shape[1], self.class_map.shape[1] - 1).astype(np.int64)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        source = np.minimum((np.arange(start, stop) + 0.5) * self.class_map.shape[0] / self.shape[0],
                            self.class_map.shape[0] - 1).astype(np.int64)
        return self.class_map[source[:, None], self._cols[None, :]][..., None]


def slide_class_geojson(class_map: np.ndarray, downsample: float, slide_mpp: float,
                        class_info: dict[int, tuple[str, tuple[int, int, int]]]) -> dict:
    """QuPath FeatureCollection of a slide's class map: per class present (but 0), one
    ``annotation`` MultiPolygon in level-0 pixel-corner coordinates (map coordinates x
    ``downsample``), ``classification`` {name, color} and ``measurements`` {area_um2, area_mm2}.

    Args:
        class_map: (h, w) integer class ids at ``downsample`` level-0 pixels per pixel.
        slide_mpp: µm per level-0 pixel.
    """
    class_map = np.asarray(class_map)
    features = []
    pixel_um2 = (downsample * slide_mpp) ** 2
    for class_id in sorted(class_info):
        mask = class_map == class_id
        if class_id == 0 or not mask.any():
            continue
        name, colour = class_info[class_id]
        polygons = [[(np.asarray(ring) * downsample).tolist() for ring in polygon] for polygon in class_polygons(mask)]
        area = float(mask.sum()) * pixel_um2
        features.append({
            "type": "Feature", "id": str(class_id),
            "geometry": {"type": "MultiPolygon", "coordinates": polygons},
            "properties": {"objectType": "annotation", "classification": {"name": name, "color": list(colour)},
                           "measurements": {"area_um2": area, "area_mm2": area / 1e6}},
        })
    return {"type": "FeatureCollection", "features": features}


def write_slide_class_map(out_dir: str | os.PathLike, stem: str, class_map: np.ndarray, downsample: float,
                          slide_mpp: float, class_info: dict[int, tuple[str, tuple[int, int, int]]],
                          tiff_downsample: float | None = None) -> dict[str, Any]:
    """Write a slide's class map as ``<stem>.classes.tif`` and ``<stem>.geojson`` (see the
    module docstring) into ``out_dir``.

    Args:
        class_map: (h, w) integer class ids 0..255 covering the slide at ``downsample``
            level-0 pixels per pixel.
        slide_mpp: µm per level-0 pixel.
        class_info: class id -> (name, (r, g, b)) of every id in ``class_map``.
        tiff_downsample: level-0 pixels per TIFF pixel (at most ``downsample``; None: ``downsample``).

    Returns:
        ``{'classes': {name: {'pixels', 'area_mm2'}} (every class but 0), 'tiff_mpp': µm per TIFF pixel}``.

    Raises:
        UserError: class ids outside ``class_info`` or 0..255, or a TIFF finer than level 0.
    """
    class_map = np.asarray(class_map)
    unknown = sorted(set(np.unique(class_map).tolist()) - set(class_info))
    if unknown or class_map.ndim != 2:
        raise UserError(f"slide class map of shape {class_map.shape} has class ids {unknown} outside {sorted(class_info)}")
    tiff_downsample = downsample if tiff_downsample is None else float(tiff_downsample)
    if not 1.0 <= tiff_downsample <= downsample:
        raise UserError(f"class-map TIFF downsample {tiff_downsample} must lie in [1, {downsample}]")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    factor = downsample / tiff_downsample
    shape = (max(1, math.ceil(class_map.shape[0] * factor - 1e-6)), max(1, math.ceil(class_map.shape[1] * factor - 1e-6)))
    write_pyramid_tiff(out_dir / f"{stem}{SUFFIXES['classes']}", NearestUpsampled(class_map, shape),
                       mpp=slide_mpp * tiff_downsample, labels=True)
    with atomic_write(out_dir / f"{stem}{SUFFIXES['geojson']}", "w") as handle:
        json.dump(slide_class_geojson(class_map, downsample, slide_mpp, class_info), handle)
    counts = np.bincount(class_map.ravel().astype(np.int64), minlength=max(class_info) + 1)
    pixel_mm2 = (downsample * slide_mpp) ** 2 / 1e6
    classes = {name: {"pixels": int(counts[cid]), "area_mm2": float(counts[cid] * pixel_mm2)}
               for cid, (name, _) in sorted(class_info.items()) if cid != 0}
    return {"classes": classes, "tiff_mpp": slide_mpp * tiff_downsample}


def write_raw(path: Path, family: Any, found: SlideMaps, slide: Slide, mag: int) -> None:
    """The slide's raw file for ``process.py``: the family's maps, picture, config and the
    slide geometry (``slide`` meta: level-0 ``dimensions``, ``mpp``, ``map_downsample``)."""
    arrays = meta_arrays(family, found.image, slide.path, mag)
    arrays["slide"] = np.array(json.dumps({"dimensions": list(slide.dimensions), "mpp": slide.mpp,
                                           "map_downsample": found.map_downsample}))
    arrays.update({name: np.asarray(values, np.float32) for name, values in found.maps.items()})
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        write_npz(handle, {}, arrays)


def run_family_slide(family: Any, net: nn.Module, slide: Slide, out_dir: Path, device: str | torch.device,
                     mask: str | os.PathLike | None = None) -> dict[str, Any]:
    """One slide through ``family.infer_slide`` and its outputs (module docstring).

    Args:
        slide: the open slide; ``out_dir``: its output folder.
        mask: a tissue-mask image covering the slide (``--mask``), or None.

    Returns:
        The summary written to ``<stem>.summary.json`` (the family's entries, class areas, seconds).
    """
    start = time.perf_counter()
    stem = slide.path.stem
    tissue = None
    if mask is not None:
        mask_mpp = mask_mpp_for(slide.mpp, slide.dimensions)
        tissue = load_mask(mask, slide.view(mask_mpp).shape, (slide.dimensions[1], slide.dimensions[0]))
    found = family.infer_slide(net, slide, device, tissue)
    inferred = time.perf_counter()
    written = write_slide_class_map(out_dir, stem, found.class_map, found.downsample, slide.mpp, found.class_info,
                                    found.tiff_downsample)
    write_raw(out_dir / f"{stem}{SUFFIXES['raw']}", family, found, slide, round(10.0 / slide.mpp))
    for name, picture in found.pictures.items():
        write_image(out_dir / f"{stem}.{name}.png", picture if picture.ndim == 3 else np.repeat(picture[..., None], 3, 2))
    if found.image.shape[:2] == found.class_map.shape:
        picture = found.image.copy()
        classes = found.class_map > 0
        picture[classes] = colour_overlay(found.image, found.class_map, found.class_info)[classes]
        write_image(out_dir / f"{stem}{SUFFIXES['thumbnail']}", picture)
    seconds = dict(found.summary.get("seconds") or {})
    seconds.update({"infer": round(inferred - start, 3), "outputs": round(time.perf_counter() - inferred, 3)})
    seconds["total"] = round(time.perf_counter() - start, 3)
    summary = {"slide": str(slide.path), "backend": slide.backend, "dimensions": list(slide.dimensions),
               "slide_mpp": slide.mpp, "mpp_source": "metadata" if slide.metadata_mpp == slide.mpp else "--slide-mpp",
               "family": family.name, "class_map_downsample": found.downsample, **written,
               **{key: value for key, value in found.summary.items() if key != "seconds"}, "seconds": seconds}
    summary.setdefault("tissue_mm2", summary.get("tissue_area_mm2", 0.0))
    with atomic_write(out_dir / f"{stem}{SUFFIXES['summary']}", "w") as handle:
        json.dump(summary, handle, indent=1)
    return summary
