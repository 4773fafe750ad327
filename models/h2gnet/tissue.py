"""H2G-Net's tissue detector (published ``src/utils/preprocessing.segment_tissue``).

A low-resolution image of the slide (published: pyramid level 5) in HSV; tissue where the
saturation is at least ``threshold`` (20 on the 0-255 scale; glass is grey-white, stained tissue
saturated), then binary closing with a disc of radius 5 and one of radius 3 (``skimage`` discs,
pixels of that image). The published code multiplies OpenCV's uint8 saturation by 255 before
thresholding, which overflows; the saturation itself is thresholded here, as intended.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from skimage.morphology import disk

from misc.errors import UserError
from models.h2gnet.slides import SlideLike, pyramid_mpp, read_whole

SATURATION_THRESHOLD = 20
CLOSING_RADII = (5, 3)


def segment_tissue(image: np.ndarray, threshold: float = SATURATION_THRESHOLD,
                   closing_radii: Sequence[int] = CLOSING_RADII) -> np.ndarray:
    """Tissue mask of a low-resolution slide image.

    Args:
        image: (H, W, 3) uint8 RGB.
        threshold: lowest tissue saturation, 0-255.
        closing_radii: radii (px) of the successive closing discs.

    Returns:
        (H, W) bool, True = tissue.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UserError(f"tissue segmentation needs an (H, W, 3) uint8 RGB image; got {image.shape} {image.dtype}")
    mask = (cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1] >= threshold).astype(np.uint8)
    for radius in closing_radii:
        disc = disk(radius).astype(np.uint8)
        padded = np.pad(mask, radius)  # closing must not glue tissue to the image border
        mask = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, disc)[radius:-radius, radius:-radius]
    return mask.astype(bool)


def slide_tissue(slide: SlideLike, mpp: float, threshold: float = SATURATION_THRESHOLD) -> np.ndarray:
    """The tissue mask of a whole slide, from the pyramid level at about ``mpp`` µm/px.

    Returns:
        (h, w) bool covering the whole slide (see :func:`models.h2gnet.slides.pyramid_mpp`).
    """
    return segment_tissue(read_whole(slide.view(pyramid_mpp(slide, mpp))), threshold)
