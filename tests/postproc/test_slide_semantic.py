"""A slide's class map: pyramid TIFFs OpenSlide opens, level-0 GeoJSON that reads back, areas."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from loader.readers import read_geojson
from misc.errors import UserError
from postproc.slide_semantic import write_slide_classes
from tests.postproc.test_semantic import CLASS_INFO, class_map

DOWNSAMPLE, SLIDE_MPP = 4, 0.25


def test_outputs_open_and_read_back_in_level0_coordinates(tmp_path: Path) -> None:
    classes = class_map((90, 120))
    prob = np.linspace(0, 1, classes.size, dtype=np.float32).reshape(classes.shape)
    written = write_slide_classes(tmp_path, "s", classes, DOWNSAMPLE, CLASS_INFO, SLIDE_MPP, prob=prob, tile=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "s.areas.csv", "s.classes.geojson", "s.classes.tif", "s.probability.tif"]
    assert written["class_mpp"] == pytest.approx(1.0)

    slide = openslide.OpenSlide(tmp_path / "s.classes.tif")
    assert slide.level_dimensions[0] == (120, 90) and slide.level_count == 3
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(SLIDE_MPP * DOWNSAMPLE)
    colours = np.asarray(slide.read_region((0, 0), 0, (120, 90)))[..., :3]
    lookup = np.array([CLASS_INFO[c][1] for c in sorted(CLASS_INFO)], np.uint8)
    np.testing.assert_array_equal(colours, lookup[classes])
    reduced = np.asarray(slide.read_region((0, 0), 1, (60, 45)))[..., :3]
    np.testing.assert_array_equal(reduced, lookup[classes[::2, ::2]])  # levels keep class colours
    grey = tifffile.imread(tmp_path / "s.probability.tif", key=0)
    np.testing.assert_array_equal(grey, np.rint(prob * 255).astype(np.uint8))

    names = [CLASS_INFO[c][0] for c in sorted(CLASS_INFO)]
    level0 = (90 * DOWNSAMPLE, 120 * DOWNSAMPLE)
    _, back = read_geojson(tmp_path / "s.classes.geojson", level0, class_names=names)
    truth = np.kron(classes, np.ones((DOWNSAMPLE, DOWNSAMPLE), np.int32))
    for class_id in CLASS_INFO:  # the rasteriser's corner rule differs from the ring's on a few edge pixels
        inter = np.sum((truth == class_id) & (back - 1 == class_id))
        assert inter / np.sum((truth == class_id) | (back - 1 == class_id)) >= 0.99, class_id


def test_areas_in_level0_pixels_and_mm2(tmp_path: Path) -> None:
    classes = class_map((90, 120))
    write_slide_classes(tmp_path, "s", classes, DOWNSAMPLE, CLASS_INFO, SLIDE_MPP)
    with open(tmp_path / "s.areas.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["class_id"]) for r in rows] == sorted(CLASS_INFO)
    for row in rows:
        pixels = int((classes == int(row["class_id"])).sum())
        assert int(row["pixels"]) == pixels
        assert float(row["area_mm2"]) == pytest.approx(pixels * DOWNSAMPLE**2 * SLIDE_MPP**2 / 1e6)
    features = json.loads((tmp_path / "s.classes.geojson").read_text())["features"]
    tumour = next(f for f in features if f["properties"]["classification"]["name"] == "tumour")
    assert tumour["properties"]["objectType"] == "annotation"
    assert tumour["properties"]["measurements"]["area_px"] == (classes == 1).sum() * DOWNSAMPLE**2
    assert not (tmp_path / "s.probability.tif").exists()


def test_without_class_info_classes_get_generic_names(tmp_path: Path) -> None:
    classes = np.zeros((40, 40), np.int32)
    classes[10:20, 10:30] = 2
    rows = write_slide_classes(tmp_path, "s", classes, 1.0, None, 0.5)["areas"]
    assert [(r["class_id"], r["class"], r["pixels"]) for r in rows] == [(0, "class 0", 1400), (2, "class 2", 200)]


@pytest.mark.parametrize("bad, message", [
    (dict(class_map=np.full((8, 8), 7, np.int32)), r"class ids \[7\] are not in class info"),
    (dict(class_map=np.zeros((8, 8), np.float32)), "integer class ids"),
    (dict(prob=np.zeros((4, 4), np.float32)), "probability map is"),
    (dict(downsample=0.0), "must be > 0"),
])
def test_bad_input_is_one_user_error_and_no_file(tmp_path: Path, bad: dict, message: str) -> None:
    args = dict(class_map=np.zeros((8, 8), np.int32), downsample=2.0, prob=None) | bad
    with pytest.raises(UserError, match=message):
        write_slide_classes(tmp_path, "s", args["class_map"], args["downsample"], CLASS_INFO, SLIDE_MPP,
                            prob=args["prob"])
    assert list(tmp_path.iterdir()) == []
