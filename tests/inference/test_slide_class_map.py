"""The shared slide class-map writer: pyramidal class-id TIFF at a chosen downsample, QuPath
GeoJSON in level-0 pixel-corner coordinates, areas per class."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from inference.slide_family import NearestUpsampled, write_slide_class_map
from misc.errors import UserError

INFO = {0: ("background", (0, 0, 0)), 1: ("Tumor", (200, 0, 0)), 2: ("Stroma", (0, 150, 0))}


def class_map() -> np.ndarray:
    """(6, 8) ids: a 2x3 block of class 1 at rows 1-2, cols 2-4; class 2 at (5, 7)."""
    values = np.zeros((6, 8), np.uint8)
    values[1:3, 2:5] = 1
    values[5, 7] = 2
    return values


def test_nearest_upsampled_bands():
    view = NearestUpsampled(class_map(), (12, 16))
    assert view.shape == (12, 16, 1)
    assert np.array_equal(view[0:12][..., 0], np.kron(class_map(), np.ones((2, 2), np.uint8)))
    assert np.array_equal(view[4:6][..., 0], np.kron(class_map()[2:3], np.ones((2, 2), np.uint8)))


def test_tiff_geojson_and_areas(tmp_path):
    written = write_slide_class_map(tmp_path, "s", class_map(), downsample=8.0, slide_mpp=0.5, class_info=INFO,
                                    tiff_downsample=4.0)
    with tifffile.TiffFile(tmp_path / "s.classes.tif") as tif:
        page = tif.pages[0]
        assert page.shape == (12, 16)
        assert np.array_equal(page.asarray(), np.kron(class_map(), np.ones((2, 2), np.uint8)))
        per_cm = page.tags["XResolution"].value
        assert per_cm[0] / per_cm[1] == pytest.approx(1e4 / 2.0)                # 4 level-0 px of 0.5 µm
    assert written["tiff_mpp"] == 2.0
    pixel_mm2 = (8 * 0.5) ** 2 / 1e6
    assert written["classes"] == {"Tumor": {"pixels": 6, "area_mm2": pytest.approx(6 * pixel_mm2)},
                                  "Stroma": {"pixels": 1, "area_mm2": pytest.approx(pixel_mm2)}}
    features = json.loads((tmp_path / "s.geojson").read_text())["features"]
    assert [f["properties"]["classification"]["name"] for f in features] == ["Tumor", "Stroma"]
    ring = np.array(features[0]["geometry"]["coordinates"][0][0])
    assert ring[:, 0].min() == 16 and ring[:, 0].max() == 40 and ring[:, 1].min() == 8 and ring[:, 1].max() == 24
    assert features[1]["properties"]["measurements"]["area_mm2"] == pytest.approx(pixel_mm2)


def test_bad_class_ids_and_tiff_resolution(tmp_path):
    with pytest.raises(UserError, match=r"class ids \[2\] outside \[0, 1\]"):
        write_slide_class_map(tmp_path, "s", class_map(), 8.0, 0.5, {0: INFO[0], 1: INFO[1]})
    with pytest.raises(UserError, match="downsample 16.0 must lie in"):
        write_slide_class_map(tmp_path, "s", class_map(), 8.0, 0.5, INFO, tiff_downsample=16.0)
