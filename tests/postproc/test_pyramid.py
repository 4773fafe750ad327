"""Pyramidal overlay TIFF: OpenSlide opens it with its levels and pixel size; labels subsampled."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest

from misc.errors import UserError
from postproc.pyramid import write_pyramid_tiff


def test_openslide_opens_the_pyramid(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 255, (700, 1000, 3), np.uint8)
    with h5py.File(tmp_path / "src.h5", "w") as store:  # an on-disk source, as the slide pipeline passes
        store["overlay"] = image
        write_pyramid_tiff(tmp_path / "ov.tif", store["overlay"], mpp=2.0, tile=128)
    slide = openslide.OpenSlide(tmp_path / "ov.tif")
    assert slide.properties["openslide.vendor"] == "generic-tiff"
    assert slide.level_dimensions == ((1000, 700), (500, 350), (250, 175), (125, 88))
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(2.0)
    region = np.asarray(slide.read_region((300, 200), 0, (64, 48)))[..., :3]
    np.testing.assert_array_equal(region, image[200:248, 300:364])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ov.tif", "src.h5"]  # scratch removed


def test_label_levels_subsample(tmp_path: Path) -> None:
    labels = np.zeros((64, 64, 1), np.uint8)
    labels[::2, ::2] = 3
    write_pyramid_tiff(tmp_path / "c.tif", labels, mpp=1.0, tile=16, labels=True)
    import tifffile
    with tifffile.TiffFile(tmp_path / "c.tif") as tif:
        assert (tif.pages[1].asarray() == 3).all()
    with pytest.raises(UserError, match="uint8"):
        write_pyramid_tiff(tmp_path / "f.tif", labels.astype(np.float32), mpp=1.0)
