"""Low-resolution tissue masks of whole slides.

Tissue is told from glass by colour saturation (stained tissue is coloured, glass is white or
grey): the HSV saturation is thresholded at Otsu's level (never below ``min_saturation``, so
a slide of bare glass gives no tissue), near-black pixels (scanner borders, pen) are dropped,
then a morphological closing joins tissue fragments, holes smaller than ``max_hole_um2`` are
filled and specks smaller than ``min_speck_um2`` removed. Sizes are in µm and µm², converted
with the mask's pixel size, so the result does not depend on the mask's resolution.

A user mask (``--mask FILE``: any image, non-zero = tissue, covering the whole slide at any
resolution) can stand in for the computed one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from skimage.filters import threshold_otsu
from scipy import ndimage
from skimage.morphology import remove_small_objects

from misc.errors import UserError
from misc.io import read_image, read_label

#: Coarsest and finest mask pixel sizes (µm/px) and the longest mask side aimed at.
MASK_MPP_RANGE = (2.0, 16.0)
MASK_LONG_SIDE = 2048


@dataclass(frozen=True)
class TissueParams:
    """Tissue detection constants.

    Attributes:
        min_saturation: lowest saturation threshold (0-255 HSV scale), whatever Otsu says.
        max_value_dark: pixels whose HSV value is below this are not tissue (black borders).
        closing_um: radius of the closing disc, in µm.
        max_hole_um2: holes up to this area are filled, in µm².
        min_speck_um2: tissue pieces below this area are removed, in µm² (at most 5 % of the
            image's area, so that a tiny slide keeps its tissue).
    """

    min_saturation: int = 20
    max_value_dark: int = 30
    closing_um: float = 20.0
    max_hole_um2: float = 20000.0
    min_speck_um2: float = 5000.0


def mask_mpp_for(slide_mpp: float, dimensions: tuple[int, int]) -> float:
    """Pixel size of a slide's tissue mask: the longer side near :data:`MASK_LONG_SIDE` px,
    clipped to :data:`MASK_MPP_RANGE` and never finer than the slide itself.

    Args:
        slide_mpp: µm per level-0 pixel.
        dimensions: level-0 (width, height).
    """
    longest_um = max(dimensions) * slide_mpp
    return max(slide_mpp, min(max(longest_um / MASK_LONG_SIDE, MASK_MPP_RANGE[0]), MASK_MPP_RANGE[1]))


def tissue_mask(image: np.ndarray, mpp: float, params: TissueParams = TissueParams()) -> np.ndarray:
    """Tissue mask of a low-resolution slide image.

    Args:
        image: (H, W, 3) uint8 RGB, the whole slide at ``mpp`` µm per pixel.
        mpp: µm per pixel of ``image``.
        params: the constants (see :class:`TissueParams`).

    Returns:
        (H, W) bool, True = tissue.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UserError(f"tissue_mask: expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    saturation, value = hsv[..., 1], hsv[..., 2]
    bright = value >= params.max_value_dark
    threshold = params.min_saturation
    if bright.any() and np.ptp(saturation[bright]) > 0:
        threshold = max(threshold, float(threshold_otsu(saturation[bright])))
    mask = (saturation > threshold) & bright
    radius = max(1, round(params.closing_um / mpp))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    padded = np.pad(mask.astype(np.uint8), radius)  # closing must not glue tissue to the border
    mask = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, disc)[radius:-radius, radius:-radius].astype(bool)
    mask = fill_small_holes(mask, max(1, math.ceil(params.max_hole_um2 / mpp**2)))
    speck = min(math.ceil(params.min_speck_um2 / mpp**2), mask.size // 20)  # tiny images keep their tissue
    return remove_small_objects(mask, max_size=speck) if speck > 0 else mask


def fill_small_holes(mask: np.ndarray, max_area: int) -> np.ndarray:
    """(H, W) bool ``mask`` with enclosed background pieces (not touching the border) of at
    most ``max_area`` pixels filled; glass at the slide's edge is never a hole."""
    background, count = ndimage.label(~mask)
    if count == 0:
        return mask
    areas = np.bincount(background.ravel(), minlength=count + 1)
    fill = areas <= max_area
    fill[np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))] = False
    fill[0] = False
    return mask | fill[background]


def load_mask(path: str | os.PathLike, shape: tuple[int, int], slide_shape: tuple[int, int]) -> np.ndarray:
    """A user's tissue mask resized (nearest) to ``shape``.

    Args:
        path: an image or label file (PNG, TIFF, ``.npy``); non-zero = tissue.
        shape: (H, W) of the mask grid wanted.
        slide_shape: level-0 (H, W) of the slide, to check the mask's aspect ratio.

    Raises:
        UserError: unreadable file, or an aspect ratio more than 2 % off the slide's.
    """
    array = read_label(path) if str(path).lower().endswith(".npy") else read_image(_existing(path), allow_grey=True)
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[..., :3].max(axis=2) if array.shape[2] >= 3 else array[..., 0]
    if array.ndim != 2 or min(array.shape) < 1:
        raise UserError(f"{path}: mask shape {array.shape} is not an (H, W) image")
    slide_ratio, mask_ratio = slide_shape[1] / slide_shape[0], array.shape[1] / array.shape[0]
    if abs(math.log(mask_ratio / slide_ratio)) > 0.02:
        raise UserError(f"{path}: mask is {array.shape[1]}x{array.shape[0]} px, the slide {slide_shape[1]}x"
                        f"{slide_shape[0]}; a mask must cover the whole slide (same aspect ratio)")
    resized = cv2.resize((array > 0).astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return resized.astype(bool)


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such mask file (--mask)")
    return path
