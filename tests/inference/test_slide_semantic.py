"""Semantic families on slides: class maps per processing tile equal the whole image's, class
pyramid, level-0 annotations, areas and summary; families of other tasks refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import openslide
import pytest

from inference.predict import infer_image
from inference.slide import SlideOptions, run_slide
from inference.slide_semantic import block_majority
from loader.readers import read_geojson
from loader.slide import open_slide
from misc.errors import UserError
from tests.inference.slide_helpers import make_slide
from tests.inference.toy_family import TOY_CLASSES, toy_family, toy_semantic_family

SHAPE = (640, 896)
OPTIONS = dict(tile=256, margin=48, show_progress=False, overlay_mpp=0.5)  # class map reduced 2x
FACTOR = 2


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slide") / "s.tif"
    make_slide(path, SHAPE, tissue=0.5)
    return path


@pytest.fixture(scope="module")
def run(slide_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    family, net = toy_semantic_family(input_size=96, output_size=64, batch_size=8)
    result = run_slide(family, net, slide_path, tmp_path_factory.mktemp("out"), "cpu", SlideOptions(**OPTIONS))
    with open_slide(slide_path) as slide:
        image, _ = slide.view(0.25).read(0, 0, SHAPE[1], SHAPE[0])
    whole = family.postprocess(infer_image(family, net, image, "cpu"))["class_map"]
    return result, whole


def test_outputs_and_summary(run: tuple) -> None:
    result, whole = run
    out, summary = result.output_dir, result.summary
    assert sorted(p.name for p in out.iterdir()) == [
        "s.areas.csv", "s.classes.geojson", "s.classes.tif", "s.probability.tif", "s.summary.json", "s.tissue.png"]
    assert summary["task"] == "semantic" and "nuclei" not in summary
    assert summary["class_mpp"] == pytest.approx(0.25 * FACTOR)
    assert summary["windows"]["run"] < summary["windows"]["grid"]
    assert set(summary["seconds"]) >= {"open", "tissue", "network", "outputs", "total"}
    # exact areas at the network's resolution: every tile touches tissue here, so they are the
    # whole image's (outside the tissue windows both give background)
    assert summary["tiles"]["processed"] == 3 * 4
    for class_id, (name, _) in TOY_CLASSES.items():
        expected = (whole == class_id).sum() * 0.25**2 / 1e6
        assert summary["class_area_mm2"][name] == pytest.approx(expected, rel=1e-9), name
    assert sum(summary["class_share_of_tissue"].values()) > 0


def test_class_pyramid_equals_the_whole_image_reduced(run: tuple) -> None:
    result, whole = run
    slide = openslide.OpenSlide(result.output_dir / "s.classes.tif")
    assert slide.level_dimensions[0] == (SHAPE[1] // FACTOR, SHAPE[0] // FACTOR)
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25 * FACTOR)
    colours = np.asarray(slide.read_region((0, 0), 0, slide.level_dimensions[0]))[..., :3]
    lookup = np.array([TOY_CLASSES[c][1] for c in sorted(TOY_CLASSES)], np.int64)
    classes = np.argmin(np.abs(colours[..., None, :].astype(np.int64) - lookup).sum(-1), axis=-1)
    expected = block_majority(whole, FACTOR)
    np.testing.assert_array_equal(classes, expected)
    assert set(np.unique(expected)) == {0, 1, 2}


def test_geojson_annotations_in_level0_pixels_and_areas(run: tuple) -> None:
    result, _ = run
    out = result.output_dir
    features = json.loads((out / "s.classes.geojson").read_text())["features"]
    assert all(f["properties"]["objectType"] == "annotation" for f in features)
    names = [TOY_CLASSES[c][0] for c in sorted(TOY_CLASSES)]
    _, back = read_geojson(out / "s.classes.geojson", SHAPE, class_names=names)
    slide = openslide.OpenSlide(out / "s.classes.tif")
    colours = np.asarray(slide.read_region((0, 0), 0, slide.level_dimensions[0]))[..., :3]
    lookup = np.array([TOY_CLASSES[c][1] for c in sorted(TOY_CLASSES)], np.int64)
    classes = np.argmin(np.abs(colours[..., None, :].astype(np.int64) - lookup).sum(-1), axis=-1)
    upsampled = np.kron(classes, np.ones((FACTOR, FACTOR), np.int64))  # level 0: the network's 0.25 µm/px
    assert ((back - 1) == upsampled).mean() >= 0.99
    with open(out / "s.areas.csv", newline="") as handle:
        rows = {int(r["class_id"]): r for r in csv.DictReader(handle)}
    for class_id in TOY_CLASSES:
        assert int(rows[class_id]["pixels"]) == int((classes == class_id).sum())
        assert float(rows[class_id]["area_mm2"]) == pytest.approx((classes == class_id).sum() * (0.25 * FACTOR) ** 2 / 1e6)


def test_patch_families_are_refused(slide_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    family, net = toy_family(input_size=96, output_size=64)
    monkeypatch.setattr(family, "task", "patch")
    with pytest.raises(UserError, match="slides take families with instance or semantic results"):
        run_slide(family, net, slide_path, tmp_path, "cpu", SlideOptions(**OPTIONS))
