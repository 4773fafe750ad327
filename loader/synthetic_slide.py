"""Synthetic whole-slide images: pyramidal tiled TIFFs built from synthetic H&E tiles with known nuclei.

The slide is a grid of ``cell`` x ``cell`` pixel cells. A tissue cell shows a synthetic tile
(:func:`loader.synthetic.generate_tile`, drawn from a pool of ``pool_size`` tiles so that large
slides cost no more to make than small ones); any other cell is glass: near-white with sensor
noise. Level ``k`` of the pyramid is every cell downsized 2^k times (area averaging).

The file is a tiled TIFF (JPEG or deflate tiles) whose pyramid levels are successive pages,
the reduced ones marked ``SubFileType = 1``, with the pixel size in the resolution tags
(pixels per centimetre): OpenSlide opens it as ``generic-tiff`` and tifffile as a pyramid.
Tiles are produced on the fly, so writing a 32,768² slide holds a few cells in memory.

Command line::

    python -m loader.synthetic_slide OUT.tif --size 8192 --mpp 0.25 --tissue 0.3
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from misc.errors import UserError, cli_main
from misc.io import atomic_path
from loader.synthetic import generate_tile, tile_seed

GLASS_LEVEL = 242


@dataclass
class SyntheticSlide:
    """Layout of a synthetic slide.

    Attributes:
        shape: level-0 (H, W) in pixels.
        tissue: (rows, cols) bool grid of tissue cells (cell (r, c) covers rows
            [r * cell, (r + 1) * cell) and the same for columns).
        cell: cell side in pixels (a power of two).
        mpp: µm per level-0 pixel.
        seed: seed of the tile pool.
        pool_size: distinct synthetic tiles; cell (r, c) shows tile ``(r * cols + c) % pool_size``.
        nuclei_density: expected nuclei per 100 x 100 px of a tissue tile.
    """

    shape: tuple[int, int]
    tissue: np.ndarray
    cell: int = 512
    mpp: float = 0.25
    seed: int = 0
    pool_size: int = 4
    nuclei_density: float = 8.0
    _pool: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)
    _glass: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.cell & (self.cell - 1) or self.cell < 16:
            raise UserError(f"synthetic slide: cell {self.cell} must be a power of two >= 16")
        rows, cols = math.ceil(self.shape[0] / self.cell), math.ceil(self.shape[1] / self.cell)
        if self.tissue.shape != (rows, cols):
            raise UserError(f"synthetic slide: tissue grid {self.tissue.shape} must be {(rows, cols)} cells")

    @property
    def tissue_area_mm2(self) -> float:
        """Area of the tissue cells inside the slide, in mm²."""
        rows = np.minimum(self.cell, self.shape[0] - np.arange(self.tissue.shape[0]) * self.cell)
        cols = np.minimum(self.cell, self.shape[1] - np.arange(self.tissue.shape[1]) * self.cell)
        pixels = float((self.tissue * rows[:, None] * cols[None, :]).sum())
        return pixels * self.mpp**2 / 1e6

    def pool(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The ``(image, inst_map, type_map)`` tiles, generated once."""
        if not self._pool:
            self._pool = [generate_tile(tile_seed(self.seed, i), (self.cell, self.cell),
                                        nuclei_density=self.nuclei_density) for i in range(self.pool_size)]
        return self._pool

    def glass(self) -> np.ndarray:
        """(cell, cell, 3) uint8 near-white glass with sensor noise."""
        if self._glass is None:
            rng = np.random.default_rng([self.seed, 1])
            noise = rng.normal(0, 1.5, (self.cell, self.cell, 3))
            self._glass = np.clip(np.rint(GLASS_LEVEL + noise), 0, 255).astype(np.uint8)
        return self._glass

    def cell_index(self, row: int, col: int) -> int | None:
        """Pool index shown by cell (row, col), or None for glass."""
        if not self.tissue[row, col]:
            return None
        return (row * self.tissue.shape[1] + col) % self.pool_size

    def level_shape(self, level: int) -> tuple[int, int]:
        """(H, W) of pyramid ``level`` (level-0 sides divided by 2^level, rounded up)."""
        return tuple(math.ceil(side / 2**level) for side in self.shape)  # type: ignore[return-value]

    def region(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        """(height, width, 3) uint8 of ``level`` at (x, y); outside the slide is glass-white (255)."""
        return self._compose(level, y, x, height, width, self._cell_image, 3, np.uint8, 255)

    def labels(self, y: int, x: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 ``inst_map`` and ``type_map`` ((height, width) int32) of a region.

        Instance ids are unique over the slide: cell (r, c)'s instance i has id
        ``(r * cols + c) * 65536 + i``.
        """
        inst = self._compose(0, y, x, height, width, self._cell_inst, None, np.int64, 0)
        types = self._compose(0, y, x, height, width, self._cell_types, None, np.int32, 0)
        return inst, types

    def _cell_image(self, row: int, col: int, level: int) -> np.ndarray:
        index = self.cell_index(row, col)
        image = self.glass() if index is None else self.pool()[index][0]
        side = self.cell >> level
        return image if level == 0 else cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)

    def _cell_inst(self, row: int, col: int, level: int) -> np.ndarray:
        index = self.cell_index(row, col)
        if index is None:
            return np.zeros((self.cell, self.cell), np.int64)
        inst = self.pool()[index][1].astype(np.int64)
        return np.where(inst > 0, inst + (row * self.tissue.shape[1] + col) * 65536, 0)

    def _cell_types(self, row: int, col: int, level: int) -> np.ndarray:
        index = self.cell_index(row, col)
        return np.zeros((self.cell, self.cell), np.int32) if index is None else self.pool()[index][2]

    def _compose(self, level: int, y: int, x: int, height: int, width: int, cell_fn, channels: int | None,
                 dtype: type, fill: int) -> np.ndarray:
        side = self.cell >> level
        level_h, level_w = self.level_shape(level)
        out = np.full((height, width) + ((channels,) if channels else ()), fill, dtype)
        for row in range(max(0, y // side), min(self.tissue.shape[0], (y + height - 1) // side + 1)):
            for col in range(max(0, x // side), min(self.tissue.shape[1], (x + width - 1) // side + 1)):
                top, left = row * side, col * side
                r0, c0 = max(y, top), max(x, left)
                r1 = min(y + height, top + side, level_h)
                c1 = min(x + width, left + side, level_w)
                if r0 >= r1 or c0 >= c1:
                    continue
                values = cell_fn(row, col, level)
                out[r0 - y : r1 - y, c0 - x : c1 - x] = values[r0 - top : r1 - top, c0 - left : c1 - left]
        return out


def disc_tissue(shape: tuple[int, int], cell: int, fraction: float) -> np.ndarray:
    """A (rows, cols) bool grid: a centred elliptical blob of about ``fraction`` of the cells."""
    if not 0 <= fraction <= 1:
        raise UserError(f"tissue fraction {fraction} is outside [0, 1]")
    rows, cols = math.ceil(shape[0] / cell), math.ceil(shape[1] / cell)
    r, c = np.mgrid[0:rows, 0:cols]
    dist = ((r + 0.5 - rows / 2) / (rows / 2)) ** 2 + ((c + 0.5 - cols / 2) / (cols / 2)) ** 2
    if fraction == 0:
        return np.zeros((rows, cols), bool)
    threshold = np.quantile(dist, fraction, method="inverted_cdf")
    return dist <= threshold


def _level_tiles(slide: SyntheticSlide, level: int, tile: int) -> Iterator[np.ndarray]:
    height, width = slide.level_shape(level)
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            yield slide.region(level, y, x, tile, tile)


def write_synthetic_slide(path: str | os.PathLike, slide: SyntheticSlide, tile: int = 256, with_mpp: bool = True,
                          compression: str = "jpeg") -> Path:
    """Write ``slide`` as a pyramidal tiled TIFF (see the module docstring), atomically.

    Args:
        tile: TIFF tile side in pixels (multiple of 16).
        with_mpp: write the pixel size in the resolution tags (False: a slide without one).
        compression: ``'jpeg'`` (quality 90) or ``'zlib'`` (lossless).

    Returns:
        The path written.
    """
    import tifffile

    if compression not in ("jpeg", "zlib"):
        raise UserError(f"synthetic slide: compression '{compression}' is not 'jpeg' or 'zlib'")
    levels = [0]
    while max(slide.level_shape(levels[-1] + 1)) >= tile and (slide.cell >> (levels[-1] + 1)) >= 8:
        levels.append(levels[-1] + 1)
    options = {"compression": "jpeg", "compressionargs": {"level": 90}} if compression == "jpeg" else {"compression": "zlib"}
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for level in levels:
            height, width = slide.level_shape(level)
            resolution = {}
            if with_mpp:
                per_cm = 1e4 / (slide.mpp * 2**level)
                resolution = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
            tif.write(_level_tiles(slide, level, tile), shape=(height, width, 3), dtype=np.uint8,
                      tile=(tile, tile), photometric="rgb", subfiletype=1 if level else 0, metadata=None,
                      **resolution, **options)
    return Path(path)


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Write a synthetic pyramidal TIFF slide."""
    parser = argparse.ArgumentParser(prog="python -m loader.synthetic_slide", description=main.__doc__)
    parser.add_argument("out", type=Path, help="output .tif")
    parser.add_argument("--size", type=int, nargs="+", default=[4096], help="side, or H W, in pixels")
    parser.add_argument("--mpp", type=float, default=0.25, help="µm per pixel (default 0.25)")
    parser.add_argument("--tissue", type=float, default=0.3, help="fraction of cells with tissue (default 0.3)")
    parser.add_argument("--cell", type=int, default=512, help="cell side in pixels (default 512)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shape = (args.size[0], args.size[-1])
    slide = SyntheticSlide(shape, disc_tissue(shape, args.cell, args.tissue), args.cell, args.mpp, args.seed)
    write_synthetic_slide(args.out, slide)
    print(f"wrote {args.out}: {shape[1]}x{shape[0]} px at {args.mpp} µm/px, {slide.tissue_area_mm2:.3f} mm² tissue")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
