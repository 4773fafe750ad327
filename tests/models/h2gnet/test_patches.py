"""Detection-stage patches from slides and tumour annotations (GeoJSON or mask image), and their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from loader.synthetic_tumour import TumourSlide, mask_geojson
from misc.errors import UserError
from misc.io import write_image
from models.h2gnet.augment import Augment
from models.h2gnet.patches import (
    DetectPatches,
    PatchGrid,
    PatchSettings,
    PatchTable,
    label_slide,
    tumour_fraction,
)
from models.h2gnet.tissue import segment_tissue, slide_tissue

SHAPE = (1024, 1536)
SETTINGS = PatchSettings(mpp=2.0, size=32, points=8)   # sample points mid-way inside the 8-px mask pixels


@pytest.fixture(scope="module")
def slide() -> TumourSlide:
    return TumourSlide(11, SHAPE)


def feature(ring: list[list[float]], name: str | None) -> dict:
    properties = {"objectType": "annotation"}
    if name is not None:
        properties["classification"] = {"name": name}
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": properties}


def write_json(path, features) -> str:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return str(path)


def test_grid_and_exact_fractions_from_a_square(slide, tmp_path):
    grid = PatchGrid.for_slide(slide, 2.0, 32)
    assert (grid.rows, grid.cols, grid.step0) == (16, 24, 64.0)
    # a square over level-0 [64, 192) x [128, 256): patch rows 2-3, cols 1-2 entirely; nothing else
    square = [[64, 128], [192, 128], [192, 256], [64, 256], [64, 128]]
    path = write_json(tmp_path / "a.geojson", [feature(square, "Tumor"), feature([[0, 0], [10, 0], [10, 10]], "Stroma")])
    fraction = tumour_fraction(grid, path, points=4)
    expected = np.zeros((16, 24), np.float32)
    expected[2:4, 1:3] = 1.0
    assert np.array_equal(fraction, expected)
    half = [[64, 128], [96, 128], [96, 192], [64, 192], [64, 128]]     # the left half of patch (2, 1)
    assert tumour_fraction(grid, write_json(tmp_path / "b.geojson", [feature(half, "Tumour")]), points=4)[2, 1] == 0.5


def test_geojson_and_mask_image_give_the_same_labels(slide, tmp_path):
    tissue_mask, tumour = slide.masks(8)
    annotation = tmp_path / "t.geojson"
    annotation.write_text(json.dumps(mask_geojson(tumour, 8)))
    write_image(tmp_path / "t.png", np.repeat((tumour * 255).astype(np.uint8)[..., None], 3, axis=2))
    tissue = slide_tissue(slide, 16.0)
    from_json = label_slide(3, slide, annotation, tissue, SETTINGS)
    from_png = label_slide(3, slide, tmp_path / "t.png", tissue, SETTINGS)
    assert len(from_json) > 100 and np.all(from_json.slide == 3)
    assert np.array_equal(from_json.label, from_png.label)
    assert np.array_equal(from_json.tumour, from_png.tumour)
    assert 0.1 < from_json.label.mean() < 0.6
    # labels agree with the exact tumour mask at the patch centres
    grid = PatchGrid.for_slide(slide, 2.0, 32)
    centre_tumour = slide.masks(64)[1][: grid.rows, : grid.cols]
    agree = centre_tumour[from_json.row, from_json.col] == from_json.label.astype(bool)
    assert agree.mean() > 0.9


def test_tissue_detection_matches_the_drawn_tissue(slide):
    truth = slide.masks(16)[0]
    found = slide_tissue(slide, 16.0)
    assert found.shape == truth.shape and (found == truth).mean() > 0.97
    with pytest.raises(UserError, match="uint8"):
        segment_tissue(np.zeros((4, 4), np.uint8))


def test_no_tumour_class_names_the_classes_found(slide, tmp_path):
    grid = PatchGrid.for_slide(slide, 2.0, 32)
    ring = [[0, 0], [100, 0], [100, 100], [0, 0]]
    path = write_json(tmp_path / "c.geojson", [feature(ring, "Stroma"), feature(ring, None), feature(ring, "Necrosis")])
    with pytest.raises(UserError, match=r"no annotation of a tumour class.*'Necrosis', 'Stroma', unclassified"):
        tumour_fraction(grid, path)


def test_annotation_outside_the_slide(slide, tmp_path):
    grid = PatchGrid.for_slide(slide, 2.0, 32)
    ring = [[1000, 900], [1700, 900], [1700, 1000], [1000, 900]]
    path = write_json(tmp_path / "d.geojson", [feature(ring, "Tumor")])
    with pytest.raises(UserError, match=r"annotation 1 \('Tumor'\) spans x 1000..1700.*outside the slide's 1536x1024"):
        tumour_fraction(grid, path)


def test_mask_of_another_aspect_ratio(slide, tmp_path):
    write_image(tmp_path / "m.png", np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(UserError, match="cover the whole slide"):
        tumour_fraction(PatchGrid.for_slide(slide, 2.0, 32), tmp_path / "m.png")


def test_dataset_reads_patches_with_labels_and_clusters(slide):
    table = PatchTable.concatenate([PatchTable.from_fractions(0, np.eye(3, dtype=np.float32), np.ones((3, 3)), 0.5, 0.5)])
    assert table.label.tolist() == [1, 0, 0, 0, 1, 0, 0, 0, 1]
    data = DetectPatches([slide], table, 2.0, 32, augment=Augment(hsv=None, mult=None))
    data.clusters[:] = 4
    sample = data[4]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
    assert int(sample["label"]) == 1 and int(sample["cluster"]) == 4
    plain = torch.from_numpy(slide.view(2.0).read(32, 32, 32, 32)[0].transpose(2, 0, 1).copy()).float()
    assert sorted(sample["image"].flatten().tolist()) == sorted(plain.flatten().tolist())   # a dihedral copy
    assert torch.equal(DetectPatches([slide], table, 2.0, 32)[4]["image"], plain)
