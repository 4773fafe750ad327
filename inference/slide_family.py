"""Slides of a family that infers them itself (``Family.infer_slide``, :func:`run_family_slide`):
the class map it returns as the semantic slide files every family writes
(:func:`postproc.slide_semantic.write_slide_classes`), a raw file for ``process.py``, pictures
and a summary.

A class map covers the whole slide at ``downsample`` level-0 pixels per pixel: map pixel
(r, c) covers level-0 [c d, (c + 1) d) x [r d, (r + 1) d). Files written into the slide's
output folder ``OUT/<stem>/``:

- ``<stem>.classes.tif``: the class colours, pyramidal, at the family's ``tiff_downsample``
  (the class map upsampled by nearest neighbours);
- ``<stem>.classes.geojson``: one QuPath ``annotation`` feature per class present (background,
  id 0, left out) in level-0 pixel-corner coordinates; ``<stem>.areas.csv``: areas per class;
- ``<stem>.npz`` (a raw file ``process.py`` reads: the family's maps, its config and the slide
  geometry), ``<stem>.<picture>.png`` (e.g. a heatmap), ``<stem>.thumbnail.png`` (classes over
  the slide) and ``<stem>.summary.json`` (with ``classes``: the areas of every class but 0).
"""

from __future__ import annotations

import json
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
from misc.io import atomic_path, atomic_write, write_image
from models.base import SlideMaps
from postproc.semantic import colour_overlay
from postproc.slide_semantic import write_slide_classes

SUFFIXES = {"raw": ".npz", "thumbnail": ".thumbnail.png", "summary": ".summary.json"}


def class_areas(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The summary's ``classes``: ``{name: {'pixels', 'area_mm2'}}`` of every class but the
    background (id 0), from :func:`postproc.slide_semantic.area_rows` rows."""
    return {row["class"]: {"pixels": row["pixels"], "area_mm2": row["area_mm2"]} for row in rows if row["class_id"] != 0}


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
    written = write_slide_classes(out_dir, stem, found.class_map, found.downsample, found.class_info, slide.mpp,
                                  tiff_downsample=found.tiff_downsample, skip_geojson=(0,))
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
               "family": family.name, "class_map_downsample": found.downsample,
               "classes": class_areas(written["areas"]), "class_mpp": written["class_mpp"], "tiff_mpp": written["tiff_mpp"],
               **{key: value for key, value in found.summary.items() if key != "seconds"}, "seconds": seconds}
    summary.setdefault("tissue_mm2", summary.get("tissue_area_mm2", 0.0))
    with atomic_write(out_dir / f"{stem}{SUFFIXES['summary']}", "w") as handle:
        json.dump(summary, handle, indent=1)
    return summary
