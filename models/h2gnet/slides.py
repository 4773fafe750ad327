"""What H2G-Net needs of a whole slide, as a protocol.

The cascade and the patch sampler read slides through the subset of the whole-slide reader's
interface below (``loader.slide.Slide`` / ``SlideView``); the in-memory synthetic slides of
:mod:`loader.synthetic_tumour` provide the same, so tests need no files.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from misc.errors import UserError


class SlideViewLike(Protocol):
    """A slide at one resolution: ``mpp`` µm per pixel, ``shape`` (H, W) in pixels."""

    mpp: float
    shape: tuple[int, int]

    def read(self, x: int, y: int, width: int, height: int) -> tuple[np.ndarray, Any]:
        """``((height, width, 3) uint8 RGB, error or None)`` of the region at view pixel (x, y)."""


class SlideLike(Protocol):
    """A whole slide: ``mpp`` µm per level-0 pixel, ``dimensions`` level-0 (W, H)."""

    mpp: float
    dimensions: tuple[int, int]

    def view(self, mpp: float) -> SlideViewLike:
        """The slide resampled to ``mpp`` µm per pixel."""


def level0_shape(slide: SlideLike) -> tuple[int, int]:
    """Level-0 (H, W) of a slide."""
    width, height = slide.dimensions
    return int(height), int(width)


def pyramid_mpp(slide: SlideLike, wanted: float) -> float:
    """The finest power-of-two multiple of the slide's pixel size that is at least ``wanted``
    µm/px, and never finer than the slide (the pyramid level read for a coarse image)."""
    if not wanted > 0:
        raise UserError(f"a slide resolution must be > 0 µm per pixel, got {wanted}")
    return slide.mpp * 2 ** max(0, math.floor(math.log2(wanted / slide.mpp) + 1e-9))


def read_whole(view: SlideViewLike) -> np.ndarray:
    """The whole view as one (H, W, 3) uint8 array (for low resolutions only)."""
    height, width = view.shape
    return view.read(0, 0, width, height)[0]
