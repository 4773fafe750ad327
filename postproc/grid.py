"""Grid maps on image pixels: a map with one value per window of a tiling (a classifier slid
over the image) placed on the image by its geometry.

A grid's geometry (``inference.tiling.GridGeometry``, or its ``{'step', 'size', 'offset'}``
as raw files record it) says that cell ``i`` along an axis is the window covering image pixels
``[offset + i * step, offset + i * step + size)``. Each pixel takes the value of the cell whose
window centre is nearest to the pixel's centre: where windows overlap, the cut is the middle
of the overlap, as where the tiler stitches dense maps; with ``size == step`` each pixel takes
the cell it lies in. Pixels beyond the first or last window take that window's value.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from misc.errors import UserError


def geometry_values(geometry: Any) -> tuple[float, float, float]:
    """``(step, size, offset)`` of a geometry given as an object or a mapping with those names."""
    try:
        if isinstance(geometry, Mapping):
            step, size, offset = (float(geometry[key]) for key in ("step", "size", "offset"))
        else:
            step, size, offset = float(geometry.step), float(geometry.size), float(geometry.offset)
    except (KeyError, AttributeError, TypeError, ValueError):
        raise UserError(f"grid geometry {geometry!r}: expected step, size and offset in pixels") from None
    if not (step > 0 and size > 0):
        raise UserError(f"grid geometry {geometry!r}: step and size must be > 0")
    return step, size, offset


def cell_of_pixels(length: int, cells: int, geometry: Any) -> np.ndarray:
    """(length,) int64: the grid cell along one axis whose window centre is nearest each pixel centre."""
    step, size, offset = geometry_values(geometry)
    centres = np.arange(length, dtype=np.float64) + 0.5
    index = np.floor((centres - offset - size / 2.0) / step + 0.5).astype(np.int64)
    return np.clip(index, 0, cells - 1)


def place_grid(values: np.ndarray, geometry: Any, shape: tuple[int, int]) -> np.ndarray:
    """A grid map on the image's pixels.

    Args:
        values: (R, K) or (R, K, C) grid map, one value per window.
        geometry: its cell geometry in image pixels (see the module docstring).
        shape: the image's (H, W).

    Returns:
        (H, W) or (H, W, C) array of ``values``' dtype.
    """
    values = np.asarray(values)
    rows = cell_of_pixels(int(shape[0]), values.shape[0], geometry)
    cols = cell_of_pixels(int(shape[1]), values.shape[1], geometry)
    return values[rows[:, None], cols[None, :]]
