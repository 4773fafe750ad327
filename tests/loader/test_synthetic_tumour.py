"""Synthetic tumour slides: exact masks, tumour that looks like tumour, pyramidal TIFFs, cohorts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loader.readers import read_geojson
from loader.synthetic_tumour import (
    GLASS_RGB,
    TumourSlide,
    main,
    mask_geojson,
    pyramid_levels,
    read_cohort,
    write_cohort,
    write_pyramid_tiff,
)
from misc.errors import UserError
from misc.io import read_image

SIZE = (1024, 1536)


@pytest.fixture(scope="module")
def slide() -> TumourSlide:
    return TumourSlide(5, SIZE)


def test_same_seed_same_pixels_and_masks(slide):
    again = TumourSlide(5, SIZE)
    assert np.array_equal(slide.region(0, 100, 200, 300, 400), again.region(0, 100, 200, 300, 400))
    assert all(np.array_equal(a, b) for a, b in zip(slide.masks(8), again.masks(8)))
    assert not np.array_equal(slide.masks(8)[1], TumourSlide(6, SIZE).masks(8)[1])


def test_masks_are_exact_on_every_grid(slide):
    tissue, tumour = slide.masks(1)
    assert tissue.shape == SIZE and not (tumour & ~tissue).any()
    share = tumour.sum() / tissue.sum()
    assert 0.1 < share < 0.45                       # the drawn tumour share of the tissue (0.15-0.4) +- grid effects
    coarse = slide.masks(4)[1]
    # a grid point of downsample 4 is the level-0 point (4 r + 2, 4 c + 2): the same field, exactly
    assert np.array_equal(coarse, slide.masks_at(np.arange(coarse.shape[0]) * 4 + 2.0, np.arange(coarse.shape[1]) * 4 + 2.0)[1])
    image = slide.region(0, 0, 0, *SIZE)
    assert np.all(image[~tissue] == GLASS_RGB)
    assert not np.any(np.all(image[tissue] == GLASS_RGB, axis=1))


def test_tumour_is_crowded_with_dark_nuclei(slide):
    tissue, tumour = slide.masks(1)
    grey = slide.region(0, 0, 0, *SIZE).astype(np.float32).mean(axis=2)
    dark = grey < 110                                # nuclear haematoxylin
    inside, outside = dark[tumour].mean(), dark[tissue & ~tumour].mean()
    assert inside > 3 * outside, (inside, outside)
    assert grey[tumour].mean() < grey[tissue & ~tumour].mean() - 15


def test_levels_render_directly_and_agree_with_level_zero(slide):
    level2 = slide.region(2, 0, 0, *slide.level_shape(2)).astype(np.float32)
    full = slide.region(0, 0, 0, *SIZE).astype(np.float32)
    pooled = full.reshape(SIZE[0] // 4, 4, SIZE[1] // 4, 4, 3).mean(axis=(1, 3))
    assert level2.shape == pooled.shape and np.abs(level2 - pooled).mean() < 12
    view = slide.view(4.0)
    assert view.shape == (256, 384) and np.array_equal(view.read(10, 20, 30, 40)[0], slide.region(2, 20, 10, 40, 30))
    with pytest.raises(UserError, match="power-of-two"):
        slide.view(3.0)


def test_pyramidal_tiff_reads_back(slide, tmp_path):
    import tifffile

    path = write_pyramid_tiff(tmp_path / "s.tif", slide)
    assert pyramid_levels(slide, 256) == [0, 1, 2]
    with tifffile.TiffFile(path) as tif:
        pages = tif.pages
        assert [p.shape for p in pages] == [(1024, 1536, 3), (512, 768, 3), (256, 384, 3)]
        assert pages[0].is_tiled and pages[0].compression == tifffile.COMPRESSION.JPEG
        assert pages[1].subfiletype == 1
        x_res = pages[0].tags["XResolution"].value
        assert pages[0].tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        assert 1e4 / (x_res[0] / x_res[1]) == pytest.approx(1.0)
        level0 = pages[0].asarray()
    assert np.abs(level0.astype(np.float32) - slide.region(0, 0, 0, *SIZE)).mean() < 4   # JPEG quality 90
    import openslide

    with openslide.OpenSlide(str(path)) as opened:
        assert opened.level_dimensions == ((1536, 1024), (768, 512), (384, 256))
        assert float(opened.properties["openslide.mpp-x"]) == pytest.approx(1.0)




def test_geojson_rasterises_to_the_mask(slide, tmp_path):
    tumour = slide.masks(4)[1]
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(mask_geojson(tumour, 4)))
    inst, _ = read_geojson(path, SIZE)
    expected = np.kron(tumour, np.ones((4, 4), bool))[: SIZE[0], : SIZE[1]]
    drawn = inst > 0
    assert (drawn & expected).sum() / (drawn | expected).sum() >= 0.99


def test_cohort_on_disk(tmp_path, capsys):
    assert main([str(tmp_path / "c"), "--train", "1", "--val", "0", "--test", "1", "--size", "512", "768"]) == 0
    record = json.loads((tmp_path / "c" / "cohort.json").read_text())
    assert [s["split"] for s in record["slides"]] == ["train", "test"] and record["mpp"] == 1.0
    mask = read_image(tmp_path / "c" / record["slides"][0]["mask"])
    assert mask.shape[:2] == (32, 48) and set(np.unique(mask)) <= {0, 255}
    assert (tmp_path / "c" / record["slides"][1]["annotation"]).is_file()
    with pytest.raises(UserError, match="outside"):
        write_cohort(tmp_path / "d", {"train": 1}, (100, 100))
    record, tests = read_cohort(tmp_path / "c" / "cohort.json", "test")
    assert record["mpp"] == 1.0 and [s.name for s in tests] == ["test_001"]
    assert tests[0].slide == str(tmp_path / "c" / "slides" / "test_001.tif")
    with pytest.raises(UserError, match=r"no split 'val' \(have \['test', 'train'\]\)"):
        read_cohort(tmp_path / "c" / "cohort.json", "val")
    (tmp_path / "c" / "masks" / "test_001.png").unlink()
    with pytest.raises(UserError, match="lacks"):
        read_cohort(tmp_path / "c" / "cohort.json")
    (tmp_path / "e.json").write_text("{}")
    with pytest.raises(UserError, match="not a cohort.json"):
        read_cohort(tmp_path / "e.json")
