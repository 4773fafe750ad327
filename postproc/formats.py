"""Writers for post-processed results: HoVer-Net ``.mat`` and ``.json``, QuPath GeoJSON, overlays.

Every writer takes a family's post-processing result pieces (``inst_map``: (H, W) int32,
0 = background; ``type_map``: (H, W) int32 or ``None``; ``inst_info``: ``{id: {'bbox',
'centroid', 'contour', 'type', 'type_prob'}}`` in HoVer-Net's conventions, see
``postproc.instances``) and writes atomically: a failed write (e.g. a full disk) leaves no
file under the final name.

Type information ("type info") maps a type id to ``(name, (r, g, b))`` as in HoVer-Net's
``type_info.json`` (``{"1": ["inflammatory", [255, 0, 0]], ...}``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import cv2
import numpy as np
import scipy.io
from skimage.measure import find_contours

from misc.errors import UserError
from misc.io import atomic_path, atomic_write, write_image, write_label

FORMATS = ("mat", "json", "geojson", "png", "tif")
DEFAULT_FORMATS = ("mat", "json", "geojson", "png")
TypeInfo = dict[int, tuple[str, tuple[int, int, int]]]

UNTYPED_CLASS = ("nucleus", (255, 255, 0))
# Distinct colours for types without given type info (type 1 first).
PALETTE = (
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255),
    (0, 255, 255), (255, 165, 0), (128, 0, 255), (0, 128, 128), (128, 128, 0),
)


def load_type_info(path: str | os.PathLike) -> TypeInfo:
    """Read a HoVer-Net ``type_info.json``: ``{"<id>": [name, [r, g, b]], ...}``.

    Raises:
        UserError: missing file, bad JSON, or an entry that is not ``[name, [r, g, b]]``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such type-info file") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: invalid JSON ({err})") from None
    return parse_type_info(data, str(path))


def parse_type_info(data: Any, source: str = "type info") -> TypeInfo:
    """Validate a ``{id: [name, [r, g, b]]}`` mapping (ids as ints or digit strings)."""
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: expected a mapping {{\"<type id>\": [name, [r, g, b]]}}")
    info: TypeInfo = {}
    for key, entry in data.items():
        try:
            name, colour = entry
            rgb = tuple(int(v) for v in colour)
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError
            info[int(key)] = (str(name), rgb)  # type: ignore[assignment]
        except (TypeError, ValueError):
            raise UserError(f"{source}: entry '{key}' is {entry!r}; expected [name, [r, g, b]] with 0-255 values") from None
    return info


def type_class(type_id: int | None, type_info: TypeInfo | None) -> tuple[str, tuple[int, int, int]]:
    """Name and colour of a type: from ``type_info``, else ``type N`` with a palette colour."""
    if type_id is None:
        return UNTYPED_CLASS
    if type_info and type_id in type_info:
        return type_info[type_id]
    return f"type {type_id}", PALETTE[(type_id - 1) % len(PALETTE)]


def _contour(entry: Mapping) -> np.ndarray:
    return np.asarray(entry["contour"], dtype=np.int64).reshape(-1, 2)


def pixel_edge_ring(contour: np.ndarray) -> np.ndarray:
    """Outline along the pixel edges of the region a pixel-centre contour encloses, in the
    pixel-corner convention of slide viewers (QuPath, ImageScope: pixel (x, y) covers
    [x, x+1) x [y, y+1)).

    The region is what ``cv2.drawContours`` fills for the contour (its own pixels included).
    Marching squares on the region upsampled 2x put the outline on the pixel edges, with each
    corner cut by a 0.25 px step (0.03 px^2), so the ring encloses the region's pixel count
    to within 1 %; collinear vertices are dropped.

    Args:
        contour: (K, 2) integer (x, y) pixel centres, e.g. ``inst_info[id]['contour']``.

    Returns:
        (M, 2) float (x, y) vertices, not closed (first vertex not repeated).
    """
    contour = np.asarray(contour, dtype=np.int64).reshape(-1, 2)
    origin = contour.min(axis=0)
    width, height = contour.max(axis=0) - origin + 1
    region = np.zeros((height, width), dtype=np.uint8)
    cv2.drawContours(region, [(contour - origin).astype(np.int32)[:, None, :]], -1, 1, thickness=cv2.FILLED)
    return _corner_ring(max(_upsampled_contours(region), key=len), origin)


def _upsampled_contours(region: np.ndarray) -> list[np.ndarray]:
    """Marching-squares contours (closed, (K, 2) float (row, col)) of the (h, w) 0/1 ``region``
    upsampled 2x and padded by one pixel: they run along the region's pixel edges, its pieces
    4-connected."""
    upsampled = np.pad(np.kron(np.asarray(region, np.uint8), np.ones((2, 2), np.uint8)), 1).astype(np.float32)
    return find_contours(upsampled, 0.5)


def _corner_ring(ring: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """A contour of :func:`_upsampled_contours` as (M, 2) float (x, y) pixel-corner vertices
    offset by ``origin`` ((x, y) of the region's top-left pixel), not closed, collinear ones dropped."""
    ring = ring[:-1]
    before, after = ring - np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0) - ring
    ring = ring[np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-9]
    # (row, col) -> (x, y), then undo the pad, move centres to corners and undo the 2x upsampling
    return (ring[:, ::-1] - 1 + 0.5) / 2 + origin


def region_edge_rings(region: np.ndarray, origin: tuple[float, float] = (0.0, 0.0)) -> list[np.ndarray]:
    """Every outline along the pixel edges of a binary region, in the pixel-corner convention
    of :func:`pixel_edge_ring`: the outer boundary of each 4-connected piece and the boundary
    of each hole.

    Args:
        region: (h, w) bool or 0/1 mask.
        origin: (x, y) of the mask's top-left pixel in the image.

    Returns:
        (M, 2) float (x, y) vertices per ring, not closed.
    """
    return [_corner_ring(ring, np.asarray(origin, np.float64)) for ring in _upsampled_contours(region)]


def nucleus_dict(inst_info: Mapping[int, Mapping]) -> dict[str, dict]:
    """HoVer-Net's ``nuc`` dict: ``{"<id>": {bbox, centroid, contour, type_prob, type}}`` as plain JSON values."""
    result = {}
    for inst_id, entry in sorted(inst_info.items()):
        result[str(int(inst_id))] = {
            "bbox": np.asarray(entry["bbox"], dtype=np.int64).reshape(2, 2).tolist(),
            "centroid": [float(v) for v in entry["centroid"]],
            "contour": _contour(entry).tolist(),
            "type_prob": None if entry.get("type_prob") is None else float(entry["type_prob"]),
            "type": None if entry.get("type") is None else int(entry["type"]),
        }
    return result


def write_json(path: str | os.PathLike, inst_info: Mapping[int, Mapping], mag: int | None) -> None:
    """Write HoVer-Net's per-image JSON ``{"mag": mag, "nuc": nucleus_dict(inst_info)}``."""
    with atomic_write(path, "w") as handle:
        json.dump({"mag": mag, "nuc": nucleus_dict(inst_info)}, handle)


def mat_dict(inst_map: np.ndarray, type_map: np.ndarray | None, inst_info: Mapping[int, Mapping]) -> dict[str, np.ndarray]:
    """HoVer-Net's ``.mat`` variables.

    Returns:
        ``inst_map`` (H, W) int32, ``inst_uid`` (N, 1) int32 ids, ``inst_centroid`` (N, 2)
        float64 (x, y) and, when typed, ``type_map`` (H, W) int32 and ``inst_type`` (N, 1) int32;
        rows in increasing id order.
    """
    ids = sorted(int(i) for i in inst_info)
    variables = {
        "inst_map": np.asarray(inst_map, np.int32),
        "inst_uid": np.array(ids, np.int32).reshape(-1, 1),
        "inst_centroid": np.array([inst_info[i]["centroid"] for i in ids], np.float64).reshape(-1, 2),
    }
    if type_map is not None:
        variables["type_map"] = np.asarray(type_map, np.int32)
        types = [inst_info[i].get("type") for i in ids]
        variables["inst_type"] = np.array([0 if t is None else t for t in types], np.int32).reshape(-1, 1)
    return variables


def write_mat(path: str | os.PathLike, inst_map: np.ndarray, type_map: np.ndarray | None,
              inst_info: Mapping[int, Mapping]) -> None:
    """Write :func:`mat_dict` as a compressed MATLAB 5 file."""
    with atomic_path(path) as tmp:
        scipy.io.savemat(tmp, mat_dict(inst_map, type_map, inst_info), do_compression=True)


def geojson_collection(inst_info: Mapping[int, Mapping], type_info: TypeInfo | None = None) -> dict:
    """A QuPath-readable GeoJSON FeatureCollection, one detection per nucleus.

    Each Feature's geometry is a Polygon whose single ring is the nucleus outline along its
    pixel edges (:func:`pixel_edge_ring`) in level-0 ``(x, y)`` pixel-corner coordinates, as
    QuPath measures them, closed (first vertex repeated at the end); contours with fewer
    than 3 vertices are skipped. ``properties`` hold ``objectType: "detection"``,
    ``classification: {name, color: [r, g, b]}`` and, when typed, ``measurements.type_prob``.
    """
    features = []
    for inst_id, entry in sorted(inst_info.items()):
        contour = _contour(entry)
        if len(contour) < 3:
            continue
        ring = pixel_edge_ring(contour)
        name, colour = type_class(entry.get("type"), type_info)
        properties: dict[str, Any] = {
            "objectType": "detection",
            "classification": {"name": name, "color": list(colour)},
        }
        if entry.get("type_prob") is not None:
            properties["measurements"] = {"type_prob": float(entry["type_prob"])}
        features.append({
            "type": "Feature",
            "id": str(int(inst_id)),
            "geometry": {"type": "Polygon", "coordinates": [np.vstack([ring, ring[:1]]).tolist()]},
            "properties": properties,
        })
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | os.PathLike, inst_info: Mapping[int, Mapping], type_info: TypeInfo | None = None) -> None:
    """Write :func:`geojson_collection` to ``path``."""
    with atomic_write(path, "w") as handle:
        json.dump(geojson_collection(inst_info, type_info), handle)


def draw_overlay(image: np.ndarray, inst_info: Mapping[int, Mapping], type_info: TypeInfo | None = None,
                 thickness: int = 2) -> np.ndarray:
    """Nucleus contours drawn on a copy of ``image`` ((H, W, 3) uint8 RGB), coloured by type."""
    overlay = np.ascontiguousarray(image, dtype=np.uint8).copy()
    by_colour: dict[tuple[int, int, int], list[np.ndarray]] = {}
    for entry in inst_info.values():
        _, colour = type_class(entry.get("type"), type_info)
        by_colour.setdefault(colour, []).append(_contour(entry).astype(np.int32)[:, None, :])
    for colour, contours in by_colour.items():
        cv2.drawContours(overlay, contours, -1, colour, thickness)
    return overlay


def write_outputs(
    output_dir: str | os.PathLike,
    name: str,
    result: Mapping[str, Any],
    image: np.ndarray,
    mag: int | None,
    formats: Iterable[str],
    type_info: TypeInfo | None = None,
) -> list[Path]:
    """Write one image's result in each of ``formats`` as ``output_dir/<format>/<name>.<ext>``.

    Args:
        result: ``{'inst_map', 'type_map', 'inst_info'}`` from a family's ``postprocess``.
        image: (H, W, 3) uint8 RGB the overlay is drawn on.

    Returns:
        The files written.
    """
    output_dir = Path(output_dir)
    written = []
    for fmt in formats:
        path = output_dir / fmt / f"{name}.{fmt}"
        try:
            _write_format(fmt, path, result, image, mag, type_info)
        except OSError as err:
            err.filename = err.filename or str(path)  # name the file in the report
            raise
        written.append(path)
    return written


def _write_format(fmt: str, path: Path, result: Mapping[str, Any], image: np.ndarray, mag: int | None,
                  type_info: TypeInfo | None) -> None:
    if fmt == "mat":
        write_mat(path, result["inst_map"], result.get("type_map"), result["inst_info"])
    elif fmt == "json":
        write_json(path, result["inst_info"], mag)
    elif fmt == "geojson":
        write_geojson(path, result["inst_info"], type_info)
    elif fmt == "png":
        write_image(path, draw_overlay(image, result["inst_info"], type_info))
    elif fmt == "tif":
        write_label(path, result["inst_map"])
    else:
        raise UserError(f"unknown output format '{fmt}'; choose from {list(FORMATS)}")
