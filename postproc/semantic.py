"""Writers for semantic results (a per-pixel class map): palette label image, colour overlay,
QuPath GeoJSON annotations with one feature per class, per-class areas.

A class map is (H, W) integer class ids; a class-info mapping ``{id: (name, (r, g, b))}`` in the
``type_info.json`` layout (:func:`postproc.formats.load_type_info`) names and colours them.
Every writer is atomic (a failed write leaves no file under the final name).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from misc.errors import UserError
from misc.io import atomic_path, atomic_write
from postproc.formats import PALETTE, TypeInfo, region_edge_rings

#: Largest side a PNG label image may have; larger maps are written as TIFF.
PNG_MAX_SIDE = 65_535


class ClassIdError(UserError):
    """A class map holding ids its class info does not name: the class info (or the family)
    is wrong for the whole set, so ``process.py`` stops with this one line instead of skipping
    the image."""


def check_class_ids(class_map: np.ndarray, class_info: TypeInfo, source: str, info_source: str = "class info") -> None:
    """Refuse class ids that ``class_info`` does not name.

    Raises:
        ClassIdError: naming ``source`` (the map), the ids it holds and those ``info_source`` has.
    """
    present = np.unique(np.asarray(class_map))
    unknown = sorted(int(v) for v in present if int(v) not in class_info)
    if unknown:
        raise ClassIdError(f"{source}: class ids {unknown[:8]} are not in {info_source} "
                        f"(it has ids {sorted(class_info)}); expected a class map with those ids")


def generic_class_info(class_ids: np.ndarray) -> TypeInfo:
    """``class N`` names and palette colours for the ids present in ``class_ids``, when no
    class info is given."""
    return {int(i): (f"class {int(i)}", PALETTE[int(i) % len(PALETTE)]) for i in np.unique(class_ids)}


def label_path(folder: str | os.PathLike, name: str, shape: tuple[int, int]) -> Path:
    """``folder/<name>.png``, or ``.tif`` when a side exceeds :data:`PNG_MAX_SIDE`."""
    suffix = ".tif" if max(shape) > PNG_MAX_SIDE else ".png"
    return Path(folder) / f"{name}{suffix}"


def write_label_image(path: str | os.PathLike, class_map: np.ndarray, class_info: TypeInfo) -> None:
    """Write a class map as an indexed image whose palette holds the class colours.

    ``.png``: 8-bit palette PNG (class ids 0-255); ``.tif``: 8-bit TIFF with a colour map
    (16-bit without one above id 255). Pixel values are the class ids, so the file reads back
    as the class map.

    Args:
        class_map: (H, W) integer class ids, all in ``class_info``.
    """
    path = Path(path)
    class_map = np.asarray(class_map)
    palette = np.zeros((256, 3), np.uint8)
    for class_id, (_, colour) in class_info.items():
        if 0 <= class_id < 256:
            palette[class_id] = colour
    small = class_map.max(initial=0) < 256 and class_map.min(initial=0) >= 0
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            if small:
                colormap = (palette.T.astype(np.uint16) * 257)
                tifffile.imwrite(tmp, class_map.astype(np.uint8), photometric="palette", colormap=colormap)
            else:
                tifffile.imwrite(tmp, class_map.astype(np.uint16))
            return
        from PIL import Image

        if small:
            picture = Image.fromarray(class_map.astype(np.uint8))  # mode L; a palette makes it P
            picture.putpalette(palette.ravel().tolist())
        else:
            picture = Image.fromarray(class_map.astype(np.uint16))
        picture.save(tmp, format="PNG")


def colour_map(class_map: np.ndarray, class_info: TypeInfo) -> np.ndarray:
    """(H, W, 3) uint8 picture of the class colours."""
    ids = np.array(sorted(class_info), np.int64)
    colours = np.array([class_info[i][1] for i in ids], np.uint8)
    index = np.clip(np.searchsorted(ids, class_map), 0, len(ids) - 1)
    return colours[index]


def colour_overlay(image: np.ndarray, class_map: np.ndarray, class_info: TypeInfo, alpha: float = 0.4) -> np.ndarray:
    """The class colours blended over ``image`` ((H, W, 3) uint8): ``(1 - alpha) image + alpha colour``.
    A class map of another size (e.g. one value per window) is resized to the image with nearest neighbours."""
    class_map = np.asarray(class_map)
    if class_map.shape != image.shape[:2]:
        import cv2

        class_map = cv2.resize(class_map.astype(np.int32), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    blended = (1.0 - alpha) * np.asarray(image, np.float32) + alpha * colour_map(class_map, class_info).astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of an (M, 2) open ring (positive: counter-clockwise in x-right, y-up axes)."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _closed(ring: np.ndarray, positive: bool) -> list[list[float]]:
    """``ring`` oriented (positive or negative signed area) and closed, as JSON lists."""
    if (_signed_area(ring) > 0) != positive:
        ring = ring[::-1]
    return np.vstack([ring, ring[:1]]).tolist()


def class_polygons(mask: np.ndarray) -> list[list[list[list[float]]]]:
    """GeoJSON MultiPolygon coordinates of a binary mask: one polygon per 4-connected piece,
    its outer ring first, then its holes, along the pixel edges in level-0 pixel-corner (x, y)
    coordinates (pixel (x, y) covers [x, x+1) x [y, y+1)).

    Args:
        mask: (H, W) bool.
    """
    pieces, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(2, 1))
    polygons = []
    for index, window in enumerate(ndimage.find_objects(pieces), start=1):
        if window is None:
            continue
        region = pieces[window] == index
        rings = region_edge_rings(region, (window[1].start, window[0].start))
        rings = [ring for ring in rings if len(ring) >= 3]
        if not rings:
            continue
        areas = [abs(_signed_area(ring)) for ring in rings]
        outer = int(np.argmax(areas))
        polygon = [_closed(rings[outer], True)]
        polygon += [_closed(ring, False) for k, ring in enumerate(rings) if k != outer]
        polygons.append(polygon)
    return polygons


def class_geojson(class_map: np.ndarray, class_info: TypeInfo) -> dict:
    """A QuPath-readable FeatureCollection with one ``annotation`` feature per class present:
    a MultiPolygon (holes included) in level-0 pixel-corner coordinates, ``classification``
    ``{name, color}`` from ``class_info`` and ``measurements.area_px``.

    Args:
        class_map: (H, W) integer class ids, all in ``class_info``.
    """
    class_map = np.asarray(class_map)
    counts = np.bincount(class_map.ravel().astype(np.int64), minlength=max(class_info) + 1)
    features = []
    for class_id in sorted(class_info):
        if counts[class_id] == 0:
            continue
        name, colour = class_info[class_id]
        features.append({
            "type": "Feature",
            "id": str(class_id),
            "geometry": {"type": "MultiPolygon", "coordinates": class_polygons(class_map == class_id)},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": name, "color": list(colour)},
                "measurements": {"area_px": int(counts[class_id])},
            },
        })
    return {"type": "FeatureCollection", "features": features}


def write_class_geojson(path: str | os.PathLike, class_map: np.ndarray, class_info: TypeInfo) -> None:
    """Write :func:`class_geojson` to ``path``."""
    with atomic_write(path, "w") as handle:
        json.dump(class_geojson(class_map, class_info), handle)


def class_areas(name: str, class_map: np.ndarray, class_info: TypeInfo, mpp: float | None) -> list[dict[str, Any]]:
    """Rows ``{image, class_id, class, pixels, area_mm2}`` per class of ``class_info``
    (``area_mm2`` = pixels x mpp^2 / 1e6, empty when the pixel size ``mpp`` (µm/px) is unknown)."""
    counts = np.bincount(np.asarray(class_map).ravel().astype(np.int64), minlength=max(class_info) + 1)
    rows = []
    for class_id, (class_name, _) in sorted(class_info.items()):
        pixels = int(counts[class_id])
        area = "" if mpp is None else pixels * float(mpp) ** 2 / 1e6
        rows.append({"image": name, "class_id": class_id, "class": class_name, "pixels": pixels, "area_mm2": area})
    return rows


def class_info_from(value: Any, source: str) -> TypeInfo:
    """Class info given in a config: a ``type_info.json`` path or an inline ``{id: [name, [r, g, b]]}``."""
    from postproc.formats import load_type_info, parse_type_info

    if isinstance(value, (str, os.PathLike)):
        return load_type_info(value)
    if isinstance(value, Mapping):
        return parse_type_info(value, source)
    raise UserError(f"{source} is {value!r}; expected a type_info.json path or {{id: [name, [r, g, b]]}}")
