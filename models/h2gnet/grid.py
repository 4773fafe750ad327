"""The refinement grid: a slide's thumbnail and heatmap on one square grid, and back.

Both inputs of the refinement stage are placed on a ``size x size`` grid (1024 by default) with
the aspect ratio kept: the longer side is resized to ``size`` and the shorter one padded at the
bottom or right (thumbnail with white = glass, heatmap and masks with 0). The thumbnail is
resized with area averaging, the heatmap and masks with nearest neighbours (the published
refinement pipeline resizes the heatmap channel with nearest neighbours). :func:`from_grid`
crops the padding and resizes a grid map back to any shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from misc.errors import UserError

DEFAULT_GRID = 1024


@dataclass(frozen=True)
class Placement:
    """Where an (height, width) image lies on a ``size x size`` grid: rows ``[0, rows)``, cols ``[0, cols)``."""

    size: int
    rows: int
    cols: int

    @classmethod
    def fit(cls, shape: tuple[int, int], size: int = DEFAULT_GRID) -> "Placement":
        """The placement of an (H, W) image: longer side -> ``size``, the other scaled alike (>= 1)."""
        height, width = int(shape[0]), int(shape[1])
        if height < 1 or width < 1 or size < 1:
            raise UserError(f"cannot place an image of {height}x{width} px on a {size} px grid")
        scale = size / max(height, width)
        return cls(size, max(1, min(size, round(height * scale))), max(1, min(size, round(width * scale))))


def to_grid(image: np.ndarray, size: int = DEFAULT_GRID, nearest: bool = False,
            pad_value: float = 0.0) -> tuple[np.ndarray, Placement]:
    """Resize ``image`` into the top-left of a ``size x size`` grid, aspect ratio kept, and pad.

    Args:
        image: (H, W) or (H, W, C) numeric array (thumbnail RGB, heatmap, mask).
        nearest: nearest-neighbour resizing (heatmaps, masks) instead of area averaging.
        pad_value: value of the padding (1.0 for a 0-1 thumbnail: white glass).

    Returns:
        ``(grid, placement)``: ``grid`` (size, size[, C]) of ``image``'s dtype.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise UserError(f"expected an (H, W) or (H, W, C) image for the refinement grid; got shape {image.shape}")
    placement = Placement.fit(image.shape[:2], size)
    resized = _resize(image, (placement.rows, placement.cols), nearest)
    grid = np.full((size, size) + image.shape[2:], pad_value, dtype=image.dtype)
    grid[: placement.rows, : placement.cols] = resized
    return grid, placement


def from_grid(grid_map: np.ndarray, placement: Placement, shape: tuple[int, int], nearest: bool = True) -> np.ndarray:
    """The content of a grid map resized back to ``shape`` = (H, W) (nearest by default: labels).

    Args:
        grid_map: (size, size[, C]) map on the grid of ``placement``.

    Returns:
        (H, W[, C]) array of ``grid_map``'s dtype.
    """
    if grid_map.shape[:2] != (placement.size, placement.size):
        raise UserError(f"grid map of shape {grid_map.shape[:2]} is not the {placement.size} px refinement grid")
    return _resize(grid_map[: placement.rows, : placement.cols], (int(shape[0]), int(shape[1])), nearest)


def _resize(image: np.ndarray, shape: tuple[int, int], nearest: bool) -> np.ndarray:
    """(H, W[, C]) resized to ``shape``: nearest neighbours (any dtype, by index arithmetic on
    pixel centres) or area averaging / bilinear (uint8 or float data)."""
    if image.shape[:2] == tuple(shape):
        return image.copy()
    if nearest:
        rows = np.minimum(((np.arange(shape[0]) + 0.5) * image.shape[0] / shape[0]).astype(np.int64), image.shape[0] - 1)
        cols = np.minimum(((np.arange(shape[1]) + 0.5) * image.shape[1] / shape[1]).astype(np.int64), image.shape[1] - 1)
        return image[rows[:, None], cols[None, :]]
    work = image if image.dtype in (np.uint8, np.float32) else image.astype(np.float32)
    interpolation = cv2.INTER_AREA if shape[0] < image.shape[0] else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(work), (int(shape[1]), int(shape[0])), interpolation=interpolation)
    if work.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return out.astype(image.dtype, copy=False)
