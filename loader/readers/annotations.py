"""Rasterise vector and text annotations: Aperio XML (MoNuSeg), QuPath GeoJSON, CPM-15 ASCII masks."""

from __future__ import annotations

import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from skimage.draw import polygon as draw_polygon

from misc.errors import UserError

log = logging.getLogger(__name__)

_MPP_ATTR = re.compile(rb'MicronsPerPixel="([0-9.eE+-]+)"')


def _parse_xml(path: Path) -> ET.Element:
    if not path.is_file():
        raise UserError(f"{path}: annotation XML not found")
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as err:
        raise UserError(f"{path}: not valid XML ({err})") from None


#: Slide viewers (Aperio ImageScope, QuPath) write vertices in the pixel-corner convention
#: ((0, 0) is the top-left corner of the first pixel); skimage.draw tests pixel centres at
#: integer coordinates, so vertices move by -0.5 px before filling. On MoNuSeg the nuclear
#: stain then lines up with the filled masks (tests/loader/test_readers_realdata.py).
PIXEL_CORNER_OFFSET = 0.5


def aperio_regions(path: str | os.PathLike, vertex_offset: float = PIXEL_CORNER_OFFSET) -> list[np.ndarray]:
    """Polygons of an Aperio ImageScope XML, one per ``<Region>``, in document order.

    Args:
        vertex_offset: pixels subtracted from every X and Y (0.5: the file's pixel-corner
            coordinates to pixel-centre coordinates; 0: the file's numbers as they are).

    Returns:
        list of (K, 2) float64 arrays of (x, y) vertices in level-0 pixels, pixel centres at
        integer coordinates.
    """
    root = _parse_xml(Path(path))
    regions = []
    for region in root.iter("Region"):
        vertices = region.findall("./Vertices/Vertex")
        try:
            xy = np.array([(float(v.attrib["X"]), float(v.attrib["Y"])) for v in vertices], dtype=np.float64)
        except (KeyError, ValueError) as err:
            raise UserError(f"{path}: region {region.get('Id')} has a bad <Vertex> ({err})") from None
        regions.append(xy.reshape(-1, 2) - vertex_offset)
    return regions


def aperio_mpp(path: str | os.PathLike) -> float | None:
    """``MicronsPerPixel`` of the root ``<Annotations>`` element, or None when absent or zero."""
    with open(path, "rb") as handle:
        match = _MPP_ATTR.search(handle.read(4096))
    value = float(match.group(1)) if match else 0.0
    return value if value > 0 else None


def rasterise_polygons(polygons: Sequence[np.ndarray], shape: tuple[int, int], source: str | os.PathLike = "") -> np.ndarray:
    """Fill polygons into an instance map; polygon ``i`` (0-based) gets id ``i + 1``.

    Filling uses ``skimage.draw.polygon(rows=Y, cols=X)``; later polygons overwrite earlier
    ones; polygons with fewer than 3 vertices are skipped (their ids stay unused) and
    counted in one warning naming ``source``.

    Args:
        polygons: (K, 2) arrays of (x, y) vertices in pixels.
        shape: (H, W) of the image.

    Returns:
        (H, W) int32 instance map, 0 = background.
    """
    inst_map = np.zeros(shape, dtype=np.int32)
    skipped = 0
    for inst_id, xy in enumerate(polygons, start=1):
        if len(xy) < 3:
            skipped += 1
            continue
        rr, cc = draw_polygon(xy[:, 1], xy[:, 0], shape=shape)
        inst_map[rr, cc] = inst_id
    if skipped:
        log.warning("%s: %d region(s) with fewer than 3 vertices skipped", source, skipped)
    return inst_map


def read_aperio_xml(path: str | os.PathLike, shape: tuple[int, int],
                    vertex_offset: float = PIXEL_CORNER_OFFSET) -> np.ndarray:
    """Instance map of an Aperio XML (MoNuSeg): (H, W) int32, region ``i`` in file order -> id ``i``.

    Ids of skipped (< 3 vertices) or fully overwritten regions are absent, so ids may have gaps.
    ``vertex_offset``: see :func:`aperio_regions`.
    """
    return rasterise_polygons(aperio_regions(path, vertex_offset), shape, path)


def read_cpm_mask(path: str | os.PathLike) -> np.ndarray:
    """CPM-15 ASCII mask: first line ``width height``, then width*height ids row-major.

    Returns:
        (height, width) int32 instance map.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: mask file not found")
    first, _, rest = path.read_text().partition("\n")
    try:
        width, height = (int(v) for v in first.split())
        values = np.array(rest.split(), dtype=np.int64)
    except ValueError:
        raise UserError(f"{path}: expected a first line 'width height' then integer ids") from None
    if values.size != width * height:
        raise UserError(f"{path}: header says {width}x{height} = {width * height} values, file has {values.size}")
    if values.size and (values.min() < 0 or values.max() > np.iinfo(np.int32).max):
        raise UserError(f"{path}: ids must be 0..2^31-1")
    return values.reshape(height, width).astype(np.int32)


def _geojson_features(content: Any, path: Path) -> list[dict]:
    if isinstance(content, dict) and content.get("type") == "FeatureCollection":
        content = content.get("features", [])
    elif isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        raise UserError(f"{path}: expected a GeoJSON FeatureCollection or a list of features")
    return content


def _feature_class(feature: dict) -> str | None:
    classification = (feature.get("properties") or {}).get("classification")
    if isinstance(classification, dict):
        return classification.get("name")
    return classification if isinstance(classification, str) else None


def _feature_rings(feature: dict, path: Path) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """(exterior, holes) pairs of a Polygon/MultiPolygon feature; other geometries give []."""
    geometry = feature.get("geometry") or {}
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        parts = [coords]
    elif kind == "MultiPolygon":
        parts = coords
    else:
        return []
    try:
        return [(np.asarray(p[0], dtype=np.float64)[:, :2], [np.asarray(h, dtype=np.float64)[:, :2] for h in p[1:]]) for p in parts]
    except (IndexError, TypeError, ValueError):
        raise UserError(f"{path}: a {kind} feature has malformed coordinates") from None


def geojson_polygons(path: str | os.PathLike) -> list[tuple[str | None, list[tuple[np.ndarray, list[np.ndarray]]]]]:
    """The Polygon/MultiPolygon features of a GeoJSON file (QuPath export), unrasterised.

    Returns:
        One ``(class_name, parts)`` per feature in file order: ``class_name`` is
        ``properties.classification.name`` (or a plain string classification; None without one),
        ``parts`` a list of ``(exterior, holes)`` with (K, 2) float64 (x, y) vertices as stored
        (level-0 pixel-corner coordinates for QuPath).

    Raises:
        UserError: unreadable file or malformed coordinates.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot be read as GeoJSON ({err})") from None
    features = [(_feature_class(feature), _feature_rings(feature, path)) for feature in _geojson_features(content, path)]
    return [(name, parts) for name, parts in features if parts]


def read_geojson(
    path: str | os.PathLike, shape: tuple[int, int], class_names: Sequence[str] | None = None,
    vertex_offset: float = PIXEL_CORNER_OFFSET,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rasterise a QuPath GeoJSON export (Polygon/MultiPolygon features, level-0 pixels).

    Feature ``i`` (0-based, counting only Polygon/MultiPolygon features) gets instance id
    ``i + 1``; all parts of a MultiPolygon share it; holes are cleared; later features
    overwrite earlier ones. Vertices move by ``-vertex_offset`` (pixel-corner to pixel-centre
    coordinates, as QuPath and our writer :func:`postproc.formats.pixel_edge_ring` use them;
    0 fills the file's numbers as they are) and are filled as
    ``skimage.draw.polygon(rows=y, cols=x)``.

    Args:
        class_names: type ``k`` is ``class_names[k - 1]``, matched to ``classification.name``;
            None gives no type map.

    Returns:
        ``(inst_map, type_map)``: (H, W) int32 each; ``type_map`` None without ``class_names``.

    Raises:
        UserError: a feature's class is missing or not in ``class_names``.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot be read as GeoJSON ({err})") from None
    inst_map = np.zeros(shape, dtype=np.int32)
    type_map = np.zeros(shape, dtype=np.int32) if class_names is not None else None
    inst_id = 0
    for feature in _geojson_features(content, path):
        rings = _feature_rings(feature, path)
        if not rings:
            continue
        inst_id += 1
        type_id = 0
        if class_names is not None:
            name = _feature_class(feature)
            if name not in class_names:
                raise UserError(f"{path}: feature {inst_id} has class {name!r}; expected one of {list(class_names)}")
            type_id = list(class_names).index(name) + 1
        for exterior, holes in rings:
            window, mask = _ring_mask(exterior - vertex_offset, [hole - vertex_offset for hole in holes], shape)
            inst_map[window][mask] = inst_id
            if type_map is not None:
                type_map[window][mask] = type_id
    return inst_map, type_map


def _ring_mask(
    exterior: np.ndarray, holes: list[np.ndarray], shape: tuple[int, int]
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Mask of a polygon with holes, inside the window of its bounding box (clipped to ``shape``)."""
    r0 = int(np.clip(np.floor(exterior[:, 1].min()), 0, shape[0]))
    c0 = int(np.clip(np.floor(exterior[:, 0].min()), 0, shape[1]))
    r1 = int(np.clip(np.ceil(exterior[:, 1].max()) + 1, 0, shape[0]))
    c1 = int(np.clip(np.ceil(exterior[:, 0].max()) + 1, 0, shape[1]))
    local = (r1 - r0, c1 - c0)
    mask = np.zeros(local, dtype=bool)
    mask[draw_polygon(exterior[:, 1] - r0, exterior[:, 0] - c0, shape=local)] = True
    for hole in holes:
        mask[draw_polygon(hole[:, 1] - r0, hole[:, 0] - c0, shape=local)] = False
    return (slice(r0, r1), slice(c0, c1)), mask
