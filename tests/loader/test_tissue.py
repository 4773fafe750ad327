"""Tissue masks: synthetic slide cells recovered, bare glass gives none, user masks resized."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from loader.slide import open_slide
from loader.synthetic_slide import SyntheticSlide, disc_tissue, write_synthetic_slide
from loader.tissue import load_mask, mask_mpp_for, tissue_mask
from misc.errors import UserError
from misc.io import write_image


@pytest.mark.parametrize("shape", [(1024, 1536), (640, 896)])
def test_mask_recovers_the_tissue_cells(tmp_path: Path, shape: tuple[int, int]) -> None:
    slide = SyntheticSlide(shape, disc_tissue(shape, 256, 0.4), cell=256, mpp=0.5, pool_size=2)
    with open_slide(write_synthetic_slide(tmp_path / "s.tif", slide)) as opened:
        mpp = mask_mpp_for(opened.mpp, opened.dimensions)
        image, errors = opened.view(mpp).read_downsampled()
    mask = tissue_mask(image, mpp)
    truth = np.kron(slide.tissue, np.ones((256, 256), np.uint8))[: shape[0], : shape[1]]
    truth = cv2.resize(truth, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
    assert errors == [] and mpp == 2.0
    assert (mask != truth).mean() < 0.02


def test_glass_only_gives_no_tissue() -> None:
    rng = np.random.default_rng(0)
    glass = np.clip(242 + rng.normal(0, 2, (200, 300, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(glass, 4.0).any()


def test_specks_removed_holes_filled() -> None:
    image = np.full((200, 200, 3), 240, np.uint8)
    image[40:160, 40:160] = (200, 80, 160)   # tissue 120x120 px at 4 µm/px
    image[95:100, 95:100] = 240               # small hole
    image[5:8, 5:8] = (200, 80, 160)          # speck
    mask = tissue_mask(image, 4.0)
    assert mask[97, 97] and not mask[6, 6] and mask[40:160, 40:160].all()
    assert not mask[:, :30].any()  # glass along the edge is not a hole


def test_user_mask_resized_and_checked(tmp_path: Path) -> None:
    user = np.zeros((50, 100, 3), np.uint8)
    user[:, :50] = 255
    write_image(tmp_path / "m.png", user)
    mask = load_mask(tmp_path / "m.png", (10, 20), (500, 1000))
    assert mask[:, :10].all() and not mask[:, 10:].any()
    with pytest.raises(UserError, match="aspect ratio"):
        load_mask(tmp_path / "m.png", (10, 20), (1000, 1000))
    with pytest.raises(UserError, match="no such mask"):
        load_mask(tmp_path / "nope.png", (10, 20), (500, 1000))
