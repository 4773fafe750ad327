"""Slides: both backends on a synthetic pyramidal TIFF, pixel size, level choice, resizing, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from loader.slide import RegionError, TiffBackend, is_slide_file, mpp_from_resolution, open_slide
from loader.synthetic_slide import SyntheticSlide, disc_tissue, write_synthetic_slide
from misc.errors import UserError

SHAPE = (600, 900)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticSlide]:
    slide = SyntheticSlide(SHAPE, disc_tissue(SHAPE, 128, 0.5), cell=128, mpp=0.5, pool_size=2)
    path = write_synthetic_slide(tmp_path_factory.mktemp("slide") / "s.tif", slide, tile=128, compression="zlib")
    return path, slide


def test_openslide_reads_the_pyramid_and_its_pixel_size(synthetic) -> None:
    path, slide = synthetic
    with open_slide(path) as opened:
        assert opened.backend == "openslide:generic-tiff"
        assert opened.mpp == pytest.approx(0.5)
        assert opened.level_dimensions[:3] == [(900, 600), (450, 300), (225, 150)]
        view = opened.view(0.5)
        region, error = view.read(100, 50, 200, 120)
        assert error is None and view.factor == 1.0
        np.testing.assert_array_equal(region, slide.region(0, 50, 100, 120, 200))


def test_tifffile_backend_matches_the_written_pixels(synthetic) -> None:
    path, slide = synthetic
    backend = TiffBackend(path)
    assert backend.metadata_mpp == pytest.approx(0.5) and len(backend.level_dimensions) >= 3
    np.testing.assert_array_equal(backend.read(1, 30, 40, 100, 70), slide.region(1, 40, 30, 70, 100))
    backend.close()


def test_view_picks_the_level_nearest_above_and_resizes(synthetic) -> None:
    path, slide = synthetic
    with open_slide(path) as opened:
        assert (opened.view(1.0).level, opened.view(1.0).factor) == (1, 1.0)
        view = opened.view(1.5)  # level 1 (1.0 µm) read and downsized 1.5x
        assert view.level == 1 and view.factor == pytest.approx(1.5) and view.shape == (200, 300)
        region, _ = view.read(0, 0, 300, 200)
        import cv2
        expected = cv2.resize(slide.region(1, 0, 0, 300, 450), (300, 200), interpolation=cv2.INTER_AREA)
        assert np.abs(region.astype(int) - expected).mean() < 6
        outside, error = view.read(290, 190, 20, 20)  # past the edge: white
        assert error is None and (outside[10:, 10:] == 255).all()


def test_explicit_mpp_and_missing_mpp(tmp_path: Path) -> None:
    slide = SyntheticSlide((256, 256), np.ones((2, 2), bool), cell=128, mpp=0.25, pool_size=1)
    path = write_synthetic_slide(tmp_path / "nompp.tif", slide, tile=128, with_mpp=False)
    with pytest.raises(UserError, match="--slide-mpp"):
        open_slide(path)
    with open_slide(path, mpp=0.3) as opened:
        assert opened.mpp == 0.3


def test_not_a_slide(tmp_path: Path) -> None:
    (tmp_path / "x.svs").write_bytes(b"not a slide")
    with pytest.raises(UserError, match="not a slide"):
        open_slide(tmp_path / "x.svs")
    with pytest.raises(UserError, match="no such slide"):
        open_slide(tmp_path / "missing.svs")


def test_plain_tiff_through_tifffile_and_slide_detection(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 255, (300, 200, 3), np.uint8)
    tifffile.imwrite(tmp_path / "plain.tif", image, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    assert not is_slide_file(tmp_path / "plain.tif")  # a small single-level TIFF is a tile
    with open_slide(tmp_path / "plain.tif") as opened:
        assert opened.backend.startswith("tifffile") and opened.mpp == pytest.approx(0.5)
        np.testing.assert_array_equal(opened.view(0.5).read(10, 20, 50, 40)[0], image[20:60, 10:60])


def test_ome_tiff_pyramid_through_tifffile(synthetic, tmp_path: Path) -> None:
    _, slide = synthetic
    image = slide.region(0, 0, 0, *SHAPE)
    with tifffile.TiffWriter(tmp_path / "s.ome.tif", ome=True) as tif:
        tif.write(image, subifds=2, tile=(128, 128), photometric="rgb",
                  metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tif.write(image[::2, ::2], subfiletype=1, tile=(128, 128), photometric="rgb")
        tif.write(image[::4, ::4], subfiletype=1, tile=(128, 128), photometric="rgb")
    assert is_slide_file(tmp_path / "s.ome.tif")
    with open_slide(tmp_path / "s.ome.tif") as opened:
        assert opened.backend == "tifffile:ome-tiff" and opened.mpp == pytest.approx(0.5)
        assert opened.level_dimensions == [(900, 600), (450, 300), (225, 150)]
        view = opened.view(1.0)
        assert view.level == 1
        np.testing.assert_array_equal(view.read(10, 20, 64, 48)[0], image[::2, ::2][20:68, 10:74])


def test_unreadable_region_is_reported_not_raised(synthetic, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = synthetic
    with open_slide(path) as opened:
        def broken(*args):
            raise OSError("corrupt tile")
        monkeypatch.setattr(opened, "read_level", broken)
        region, error = opened.view(0.5).read(0, 0, 64, 32)
        assert isinstance(error, RegionError) and "corrupt tile" in error.reason
        assert region.shape == (32, 64, 3) and (region == 255).all()


def test_mpp_from_resolution_rejects_screen_dpi() -> None:
    assert mpp_from_resolution(40000, "centimeter") == pytest.approx(0.25)
    assert mpp_from_resolution(72, 2) is None and mpp_from_resolution(None, 3) is None
