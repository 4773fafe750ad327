"""Semantic writers: GeoJSON regions read back to the class map, palette label images, areas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage.draw import disk, rectangle

from loader.readers import read_geojson
from misc.errors import UserError
from misc.io import read_label
from postproc.semantic import (
    check_class_ids, class_areas, class_geojson, colour_overlay, label_path, write_class_geojson, write_label_image,
)

CLASS_INFO = {0: ("background", (255, 255, 255)), 1: ("tumour", (200, 0, 0)), 2: ("stroma", (0, 160, 0)),
              3: ("gland", (0, 0, 200))}


def class_map(shape: tuple[int, int] = (90, 120)) -> np.ndarray:
    """Regions with holes, holes with islands, touching regions and a 1-pixel line."""
    out = np.zeros(shape, np.int32)
    out[rectangle((5, 5), (60, 70), shape=shape)] = 2
    out[disk((30, 35), 15, shape=shape)] = 0          # a hole in the stroma
    out[disk((30, 35), 6, shape=shape)] = 1           # an island in the hole
    out[disk((70, 95), 18, shape=shape)] = 1
    out[rectangle((10, 80), (25, 115), shape=shape)] = 3
    out[80, 5:60] = 3                                 # a thin line
    out[50:56, 50:53] = 1                             # tumour inside the stroma
    return out


def read_back(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The class map a GeoJSON holds (QuPath corner convention); -1 where no feature is."""
    names = [CLASS_INFO[c][0] for c in sorted(CLASS_INFO)]
    _, type_map = read_geojson(path, shape, class_names=names)
    return type_map - 1


def test_geojson_reads_back_to_the_class_map(tmp_path: Path) -> None:
    truth = class_map()
    path = tmp_path / "regions.geojson"
    write_class_geojson(path, truth, CLASS_INFO)
    back = read_back(path, truth.shape)
    for class_id in CLASS_INFO:
        inter = np.sum((truth == class_id) & (back == class_id))
        union = np.sum((truth == class_id) | (back == class_id))
        assert inter / union >= 0.99, (class_id, inter / union)


def test_geojson_has_one_annotation_multipolygon_per_class_with_holes() -> None:
    collection = class_geojson(class_map(), CLASS_INFO)
    assert [f["properties"]["classification"]["name"] for f in collection["features"]] == \
        ["background", "tumour", "stroma", "gland"]
    assert all(f["properties"]["objectType"] == "annotation" for f in collection["features"])
    stroma = collection["features"][2]["geometry"]
    assert stroma["type"] == "MultiPolygon"
    assert max(len(polygon) for polygon in stroma["coordinates"]) >= 2  # the outer ring and a hole
    ring = np.array(stroma["coordinates"][0][0])
    assert np.array_equal(ring[0], ring[-1])
    # the rectangle's corner pixel (5, 5) starts at its corner (5, 5); cut corners are 0.25 px
    assert ring[:, 0].min() == pytest.approx(5.0, abs=0.25) and ring[:, 1].min() == pytest.approx(5.0, abs=0.25)


def test_label_image_holds_the_class_ids_and_their_palette(tmp_path: Path) -> None:
    from PIL import Image

    truth = class_map()
    path = label_path(tmp_path, "image", truth.shape)
    assert path.suffix == ".png"
    write_label_image(path, truth, CLASS_INFO)
    np.testing.assert_array_equal(read_label(path), truth)
    palette = np.array(Image.open(path).getpalette()[:12]).reshape(4, 3)
    np.testing.assert_array_equal(palette, [CLASS_INFO[c][1] for c in range(4)])


def test_label_image_above_the_png_limit_is_a_tiff(tmp_path: Path) -> None:
    assert label_path(tmp_path, "slide", (10, 70_000)).suffix == ".tif"
    truth = class_map()[:20, :30]
    write_label_image(tmp_path / "small.tif", truth, CLASS_INFO)
    np.testing.assert_array_equal(read_label(tmp_path / "small.tif"), truth)


def test_areas_in_pixels_and_square_millimetres() -> None:
    truth = np.array([[0, 1, 1], [1, 1, 3]])
    rows = class_areas("x", truth, CLASS_INFO, mpp=0.5)
    assert [(r["class"], r["pixels"]) for r in rows] == [("background", 1), ("tumour", 4), ("stroma", 0), ("gland", 1)]
    assert rows[1]["area_mm2"] == pytest.approx(4 * 0.25 / 1e6)
    assert class_areas("x", truth, CLASS_INFO, mpp=None)[1]["area_mm2"] == ""


def test_overlay_blends_class_colours() -> None:
    image = np.zeros((2, 2, 3), np.uint8)
    picture = colour_overlay(image, np.array([[1, 1], [0, 0]]), CLASS_INFO, alpha=0.5)
    np.testing.assert_array_equal(picture[0, 0], [100, 0, 0])


def test_class_ids_outside_the_class_info_are_refused() -> None:
    with pytest.raises(UserError, match=r"map.png: class ids \[7\] are not in classes.json"):
        check_class_ids(np.array([[0, 7]]), CLASS_INFO, "map.png", "classes.json")
