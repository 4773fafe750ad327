"""Synthetic whole slides with tumour regions and their exact tumour masks (H2G-Net's data).

A slide is tissue on glass. Two smooth random fields, each a coarse Gaussian-filtered noise grid
interpolated bilinearly to any pixel, decide what every point shows: the tissue field (a central
blob with a ragged rim) above its threshold is tissue, and the tumour field above its threshold
inside the tissue is tumour, giving tumour regions of random shape, size and number. Both masks
are exact at any resolution: a pixel is tumour exactly when the field at its centre (in level-0
coordinates) is above the threshold, so the mask of a grid is computed, not resampled.

Texture costs little: a few synthetic tiles (:func:`loader.synthetic.generate_tile`) per tissue
kind, in 8 orientations each, are laid out over the slide (tile ``(ty, tx)`` shows a random
variant). Tumour tiles differ from the surrounding tissue as carcinoma does: crowded (3x the
nuclei), clustered, enlarged (1.4x) and darker epithelial nuclei (haematoxylin optical density
x1.8); normal tiles are stroma with scattered nuclei and small epithelial clusters. Each slide
gets its own tiles and a stain-strength variation. Level ``k`` of the pyramid uses the tiles
downsized 2^k times (area averaging), so any level renders directly, block by block.

Nuclei are drawn at ``nucleus_scale`` for a slide of ``mpp`` µm per pixel (default 1.0 µm/px,
about 10x: epithelial nuclei 6-8 px across); an 8,192 px slide is then 8 mm of tissue.

Command line (a cohort for H2G-Net: slides, tumour masks, QuPath GeoJSON, and ``cohort.json``)::

    python -m loader.synthetic_tumour OUT_DIR --train 6 --val 2 --test 2 --size 8192
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from scipy import ndimage

from misc.errors import UserError, cli_main
from misc.io import atomic_path, atomic_write, write_image
from loader.synthetic import generate_tile, tile_seed

GLASS_RGB = (238, 236, 240)
TEXTURE_TILE = 256
#: Tiles per tissue kind (each in 8 orientations).
TILE_VARIANTS = 4
NORMAL_STYLE = {"nuclei_density": 22.0, "cluster_fraction": 0.35, "nucleus_scale": 0.36}
TUMOUR_STYLE = {"nuclei_density": 60.0, "cluster_fraction": 0.95, "nucleus_scale": 0.5}
#: Haematoxylin optical-density factor of tumour nuclei (epithelial, others).
TUMOUR_DARKENING = (1.8, 1.25)
MIN_SIDE, MAX_SIDE = 256, 65536
TUMOUR_CLASS = "Tumor"  # QuPath's built-in class name


def _smooth_field(rng: np.random.Generator, cells: tuple[int, int], sigma: float) -> np.ndarray:
    """(rows, cols) float64 coarse noise, Gaussian-filtered and standardised (mean 0, sd 1)."""
    field = ndimage.gaussian_filter(rng.standard_normal(cells), sigma, mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-12)


def _interpolation_matrix(centres: np.ndarray, nodes: int, spacing: float) -> np.ndarray:
    """(n, nodes) float32 bilinear weights of the grid nodes (node j at ``j * spacing``) at ``centres``."""
    position = np.clip(centres / spacing, 0, nodes - 1)
    low = np.minimum(np.floor(position).astype(np.int64), nodes - 2)
    frac = (position - low).astype(np.float32)
    weights = np.zeros((len(centres), nodes), np.float32)
    rows = np.arange(len(centres))
    weights[rows, low] = 1 - frac
    weights[rows, low + 1] = frac
    return weights


def _variant_bank(seed: int, style: dict, darkening: tuple[float, float] | None, tone: np.ndarray) -> np.ndarray:
    """(TILE_VARIANTS * 8, T, T, 3) uint8: synthetic tiles in their 8 dihedral orientations.

    ``darkening`` multiplies the optical density of epithelial / other nuclei (tumour);
    ``tone`` (3,) multiplies every pixel's optical density per channel (the slide's staining).
    """
    tiles = []
    for i in range(TILE_VARIANTS):
        image, inst_map, type_map = generate_tile(tile_seed(seed, i), (TEXTURE_TILE, TEXTURE_TILE), **style)
        density = -np.log(np.maximum(image.astype(np.float32), 1.0) / 255.0)
        factor = np.ones(inst_map.shape, np.float32)
        if darkening is not None:
            factor = np.where(type_map == 1, darkening[0], np.where(inst_map > 0, darkening[1], 1.0)).astype(np.float32)
        density = density * factor[..., None] * tone.astype(np.float32)
        tiles.append(np.clip(np.rint(255.0 * np.exp(-density)), 0, 255).astype(np.uint8))
    oriented = [np.rot90(np.flip(t, 1) if flip else t, k) for t in tiles for flip in (0, 1) for k in range(4)]
    return np.ascontiguousarray(np.stack(oriented))


@dataclass
class TumourSlide:
    """A synthetic slide with tumour regions; renders any region of any power-of-two level.

    Args:
        seed: the only source of randomness (textures, fields, layout).
        shape: level-0 (H, W) in pixels, each in [256, 65536].
        mpp: µm per level-0 pixel.
        tumour_fraction: (low, high) range of the tissue share that is tumour (drawn per slide).
    """

    seed: int
    shape: tuple[int, int]
    mpp: float = 1.0
    tumour_fraction: tuple[float, float] = (0.15, 0.4)

    def __post_init__(self) -> None:
        self.shape = (int(self.shape[0]), int(self.shape[1]))
        if not all(MIN_SIDE <= side <= MAX_SIDE for side in self.shape):
            raise UserError(f"synthetic tumour slide shape {self.shape} is outside [{MIN_SIDE}, {MAX_SIDE}] px a side")
        if not self.mpp > 0:
            raise UserError(f"synthetic tumour slide mpp {self.mpp} must be > 0")
        low, high = self.tumour_fraction
        if not 0 < low <= high < 1:
            raise UserError(f"tumour_fraction ({low}, {high}) must satisfy 0 < low <= high < 1")
        rng = np.random.default_rng([self.seed, 7])
        self.cell = TEXTURE_TILE  # texture tile side; the pyramid stops where it would be under 8 px
        self._fields(rng, float(rng.uniform(low, high)))
        tiles = (math.ceil(self.shape[0] / TEXTURE_TILE), math.ceil(self.shape[1] / TEXTURE_TILE))
        self._variant = rng.integers(TILE_VARIANTS * 8, size=(2,) + tiles)   # per kind, per texture tile
        self._tone = rng.normal(1.0, 0.06, 3).clip(0.85, 1.15)
        self._bank_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _fields(self, rng: np.random.Generator, tumour_share: float) -> None:
        """Coarse tissue and tumour fields and their thresholds (tumour ~``tumour_share`` of the tissue)."""
        nodes = 33
        self._spacing = (self.shape[0] / (nodes - 1), self.shape[1] / (nodes - 1))
        v, u = np.meshgrid(np.linspace(-1, 1, nodes), np.linspace(-1, 1, nodes), indexing="ij")
        centre = rng.uniform(-0.15, 0.15, 2)
        radius = np.hypot((v - centre[0]) / rng.uniform(0.7, 0.9), (u - centre[1]) / rng.uniform(0.7, 0.9))
        self._tissue = (1.0 - radius) + 0.25 * _smooth_field(rng, (nodes, nodes), 2.0)
        self._tumour = _smooth_field(rng, (nodes, nodes), rng.uniform(2.0, 3.5))
        fine = self._field_grid(self._tumour, 257), self._field_grid(self._tissue, 257)
        tissue = fine[1] > 0
        if not tissue.any():
            raise UserError(f"synthetic tumour slide {self.seed}: no tissue drawn; use another seed")
        self._tumour_threshold = float(np.quantile(fine[0][tissue], 1.0 - tumour_share))

    def _field_grid(self, coarse: np.ndarray, side: int) -> np.ndarray:
        """``coarse`` interpolated on a ``side x side`` grid spanning the slide."""
        rows = (np.arange(side) + 0.5) * self.shape[0] / side
        cols = (np.arange(side) + 0.5) * self.shape[1] / side
        return self._interpolate(coarse, rows, cols)

    def _interpolate(self, coarse: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(len(rows), len(cols)) float32 field at level-0 points (row, col) (separable bilinear)."""
        wy = _interpolation_matrix(rows, coarse.shape[0], self._spacing[0])
        wx = _interpolation_matrix(cols, coarse.shape[1], self._spacing[1])
        return wy @ coarse.astype(np.float32) @ wx.T

    def masks_at(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``(tissue, tumour)`` (len(rows), len(cols)) bool masks at level-0 points."""
        tissue = self._interpolate(self._tissue, rows, cols) > 0
        tumour = tissue & (self._interpolate(self._tumour, rows, cols) > self._tumour_threshold)
        return tissue, tumour

    def masks(self, downsample: float) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``(tissue, tumour)`` masks on the grid of ``downsample`` level-0 px per pixel.

        Returns:
            Two (ceil(H / downsample), ceil(W / downsample)) bool arrays; pixel (r, c) is the
            state of the point at the centre of the level-0 block it covers.
        """
        if not downsample >= 1:
            raise UserError(f"mask downsample {downsample} must be >= 1")
        rows = (np.arange(math.ceil(self.shape[0] / downsample)) + 0.5) * downsample
        cols = (np.arange(math.ceil(self.shape[1] / downsample)) + 0.5) * downsample
        return self.masks_at(np.minimum(rows, self.shape[0] - 0.5), np.minimum(cols, self.shape[1] - 0.5))

    @functools.cached_property
    def _banks(self) -> tuple[np.ndarray, np.ndarray]:
        """(normal, tumour) level-0 texture banks (see :func:`_variant_bank`)."""
        return (_variant_bank(tile_seed(self.seed, 0), NORMAL_STYLE, None, self._tone),
                _variant_bank(tile_seed(self.seed, 1), TUMOUR_STYLE, TUMOUR_DARKENING, self._tone))

    def _level_banks(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        """The texture banks downsized 2^level times (area averaging), made once per level."""
        side = TEXTURE_TILE >> level
        if side < 1:
            raise UserError(f"synthetic tumour slide: level {level} is below one texture pixel")
        if level not in self._bank_cache:
            self._bank_cache[level] = self._banks if level == 0 else tuple(
                np.stack([cv2.resize(t, (side, side), interpolation=cv2.INTER_AREA) for t in bank]) for bank in self._banks)
        return self._bank_cache[level]

    def level_shape(self, level: int) -> tuple[int, int]:
        """(H, W) of pyramid ``level`` (level-0 sides divided by 2^level, rounded up)."""
        return (math.ceil(self.shape[0] / 2**level), math.ceil(self.shape[1] / 2**level))

    def region(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB of pyramid ``level`` from level pixel (x, y); glass outside the slide."""
        scale = 2**level
        rows = y + np.arange(height)
        cols = x + np.arange(width)
        tissue, tumour = self.masks_at((rows + 0.5) * scale, (cols + 0.5) * scale)
        level_h, level_w = self.level_shape(level)
        tissue &= ((rows >= 0) & (rows < level_h))[:, None] & ((cols >= 0) & (cols < level_w))[None, :]
        normal_bank, tumour_bank = self._level_banks(level)
        image = self._texture(normal_bank, self._variant[0], y, x, height, width)
        if tumour.any():
            image = np.where(tumour[..., None], self._texture(tumour_bank, self._variant[1], y, x, height, width), image)
        return np.where(tissue[..., None], image, np.array(GLASS_RGB, np.uint8))

    @staticmethod
    def _texture(bank: np.ndarray, variant: np.ndarray, y: int, x: int, height: int, width: int) -> np.ndarray:
        """(height, width, 3) uint8: the texture tiles (``variant[ty, tx]`` of ``bank``) over a level region.

        The tiles the region touches are laid out whole (one gather and a reshape), then cropped;
        indices beyond the slide repeat its edge tiles.
        """
        side = bank.shape[1]
        ty0, tx0 = y // side, x // side
        ty1, tx1 = (y + height - 1) // side + 1, (x + width - 1) // side + 1
        tile_rows = np.clip(np.arange(ty0, ty1), 0, variant.shape[0] - 1)
        tile_cols = np.clip(np.arange(tx0, tx1), 0, variant.shape[1] - 1)
        tiles = bank[variant[tile_rows][:, tile_cols]]                     # (nty, ntx, side, side, 3)
        mosaic = tiles.transpose(0, 2, 1, 3, 4).reshape(len(tile_rows) * side, len(tile_cols) * side, 3)
        top, left = y - ty0 * side, x - tx0 * side
        return mosaic[top : top + height, left : left + width]

    def view(self, mpp: float) -> "TumourSlideView":
        """The slide at ``mpp`` µm per pixel (a power-of-two multiple of :attr:`mpp`)."""
        return TumourSlideView(self, mpp)

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return (self.shape[1], self.shape[0])


class TumourSlideView:
    """A :class:`TumourSlide` at one of its pyramid resolutions, read like a slide view.

    Attributes:
        mpp: µm per view pixel; shape: (H, W) of the view.
    """

    def __init__(self, slide: TumourSlide, mpp: float) -> None:
        level = math.log2(mpp / slide.mpp) if mpp > 0 else -1.0
        if level < 0 or abs(level - round(level)) > 1e-6 or (TEXTURE_TILE >> round(level)) < 1:
            raise UserError(f"a synthetic slide of {slide.mpp} µm/px renders at power-of-two multiples of it; got {mpp}")
        self.slide, self.level, self.mpp = slide, int(round(level)), float(mpp)
        self.shape = slide.level_shape(self.level)

    def read(self, x: int, y: int, width: int, height: int) -> tuple[np.ndarray, None]:
        """``((height, width, 3) uint8 RGB, None)`` of the view region at (x, y)."""
        return self.slide.region(self.level, y, x, height, width), None

    def read_downsampled(self, block: int = 2048) -> tuple[np.ndarray, list]:
        """The whole view as one (H, W, 3) uint8 array and no read errors."""
        return self.read(0, 0, self.shape[1], self.shape[0])[0], []


def pyramid_levels(slide: TumourSlide, tile: int) -> list[int]:
    """Levels 0, 1, ... while the next level's longer side is at least ``tile`` and a texture tile >= 8 px."""
    levels = [0]
    while max(slide.level_shape(levels[-1] + 1)) >= tile and (slide.cell >> (levels[-1] + 1)) >= 8:
        levels.append(levels[-1] + 1)
    return levels


def _level_tiles(slide: TumourSlide, level: int, tile: int) -> Iterator[np.ndarray]:
    """The level's TIFF tiles in row-major order, rendered one band of ``tile`` rows at a time."""
    height, width = slide.level_shape(level)
    padded_width = math.ceil(width / tile) * tile
    for y in range(0, height, tile):
        band = slide.region(level, y, 0, tile, padded_width)
        for x in range(0, padded_width, tile):
            yield band[:, x : x + tile]


def write_pyramid_tiff(path: str | os.PathLike, slide: TumourSlide, tile: int = 256, quality: int = 90) -> Path:
    """Write ``slide`` as a tiled pyramidal TIFF (JPEG tiles), atomically.

    Levels are successive pages (reduced ones ``SubFileType = 1``) with the pixel size in the
    resolution tags (pixels per centimetre), which OpenSlide opens as ``generic-tiff``.
    """
    import tifffile

    if tile % 16 or tile < 16:
        raise UserError(f"TIFF tile side {tile} must be a positive multiple of 16")
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for level in pyramid_levels(slide, tile):
            per_cm = 1e4 / (slide.mpp * 2**level)
            tif.write(_level_tiles(slide, level, tile), shape=slide.level_shape(level) + (3,), dtype=np.uint8,
                      tile=(tile, tile), photometric="rgb", subfiletype=1 if level else 0, metadata=None,
                      resolution=(per_cm, per_cm), resolutionunit="CENTIMETER",
                      compression="jpeg", compressionargs={"level": quality})
    return Path(path)


def mask_geojson(mask: np.ndarray, downsample: float, name: str = TUMOUR_CLASS) -> dict:
    """A QuPath GeoJSON FeatureCollection of the mask's regions (one ``annotation`` feature each).

    Rings follow pixel edges of the mask and are given in level-0 pixel-corner coordinates
    (mask pixel (r, c) covers level-0 [c d, (c + 1) d) x [r d, (r + 1) d)).

    Args:
        mask: (h, W) bool mask on the grid of ``downsample`` level-0 px per pixel.
    """
    upscaled = np.kron(mask.astype(np.uint8), np.ones((2, 2), np.uint8))  # corners at even coordinates
    contours, hierarchy = cv2.findContours(np.pad(upscaled, 1), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    features = []
    for index, contour in enumerate(contours):
        if hierarchy[0][index][3] != -1:
            continue
        rings = [contour] + [contours[i] for i in range(len(contours)) if hierarchy[0][i][3] == index]
        coords = [_ring_coordinates(ring, downsample) for ring in rings]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": coords},
                         "properties": {"objectType": "annotation", "classification": {"name": name, "color": [200, 0, 0]}}})
    return {"type": "FeatureCollection", "features": features}


def _ring_coordinates(contour: np.ndarray, downsample: float) -> list[list[float]]:
    """A closed ring in level-0 corner coordinates from a contour traced on the 2x upscaled, 1-padded mask.

    The contour runs through pixel centres of the upscaled mask; mask pixel edges lie midway
    between them, so ((u - 1) + 0.5) / 2 * d with u the upscaled padded coordinate, rounded to
    the nearest edge (multiples of d).
    """
    points = contour[:, 0, :].astype(np.float64)
    edges = np.round((points - 1 + 0.5) / 2.0) * downsample
    ring = [[float(x), float(y)] for x, y in edges]
    return ring + [ring[0]]


@dataclass(frozen=True)
class CohortSlide:
    """One slide of a written cohort (paths relative to the cohort folder)."""

    name: str
    split: str
    slide: str
    mask: str
    annotation: str
    mask_downsample: int
    tumour_fraction: float


def write_cohort(out_dir: str | os.PathLike, counts: dict[str, int], size: tuple[int, int], seed: int = 0,
                 mpp: float = 1.0, mask_downsample: int = 16) -> list[CohortSlide]:
    """Write a cohort: ``slides/<name>.tif``, ``masks/<name>.png`` (0/255 tumour mask at
    ``mask_downsample``), ``annotations/<name>.geojson`` (QuPath tumour annotations) and
    ``cohort.json`` (mpp, mask downsample, the slides per split).

    Args:
        counts: slides per split, e.g. ``{'train': 6, 'val': 2, 'test': 2}``.
        size: level-0 (H, W) of every slide.
        seed: cohort seed; slide ``i`` (over all splits, in order) uses ``tile_seed(seed, i)``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; give a folder to write the cohort into")
    if mask_downsample < 1:
        raise UserError(f"mask downsample {mask_downsample} must be at least 1")
    written, index = [], 0
    for split, count in counts.items():
        for _ in range(int(count)):
            name = f"{split}_{index:03d}"
            slide = TumourSlide(tile_seed(seed, index), size, mpp)
            write_pyramid_tiff(out / "slides" / f"{name}.tif", slide)
            tissue, tumour = slide.masks(mask_downsample)
            write_image(out / "masks" / f"{name}.png", np.repeat((tumour * 255).astype(np.uint8)[..., None], 3, axis=2))
            with atomic_write(out / "annotations" / f"{name}.geojson", "w") as handle:
                json.dump(mask_geojson(tumour, mask_downsample), handle)
            written.append(CohortSlide(name, split, f"slides/{name}.tif", f"masks/{name}.png",
                                       f"annotations/{name}.geojson", mask_downsample,
                                       float(tumour.sum() / max(1, tissue.sum()))))
            index += 1
    record = {"mpp": mpp, "size": list(size), "seed": seed, "tumour_class": TUMOUR_CLASS,
              "slides": [vars(entry) for entry in written]}
    with atomic_write(out / "cohort.json", "w") as handle:
        json.dump(record, handle, indent=1)
    return written


def read_cohort(path: str | os.PathLike, split: str | None = None) -> tuple[dict, list[CohortSlide]]:
    """A cohort written by :func:`write_cohort`: its record and its slides (paths made absolute).

    Args:
        split: keep only this split (``train``, ``val``, ``test``); None keeps all.

    Raises:
        UserError: unreadable file, missing keys or files, or an unknown split.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        slides = [CohortSlide(**entry) for entry in record["slides"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a cohort.json of loader.synthetic_tumour ({type(err).__name__}: {err})") from None
    if split is not None:
        splits = sorted({s.split for s in slides})
        if split not in splits:
            raise UserError(f"{path}: no split '{split}' (have {splits})")
        slides = [s for s in slides if s.split == split]
    root = path.parent
    resolved = []
    for entry in slides:
        files = {key: str(root / getattr(entry, key)) for key in ("slide", "mask", "annotation")}
        missing = [name for name in files.values() if not Path(name).is_file()]
        if missing:
            raise UserError(f"{path}: slide '{entry.name}' lacks {missing}")
        resolved.append(CohortSlide(**{**vars(entry), **files}))
    return record, resolved


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Write a synthetic tumour-slide cohort (pyramidal TIFFs, tumour masks, GeoJSON, cohort.json)."""
    parser = argparse.ArgumentParser(prog="python -m loader.synthetic_tumour", description=main.__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--train", type=int, default=6)
    parser.add_argument("--val", type=int, default=2)
    parser.add_argument("--test", type=int, default=2)
    parser.add_argument("--size", type=int, nargs="+", default=[8192], help="side, or H W, in pixels (default 8192)")
    parser.add_argument("--mpp", type=float, default=1.0, help="µm per level-0 pixel (default 1.0, about 10x)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = {"train": args.train, "val": args.val, "test": args.test}
    written = write_cohort(args.out_dir, counts, (args.size[0], args.size[-1]), args.seed, args.mpp)
    print(f"wrote {len(written)} slides of {args.size[0]}x{args.size[-1]} px to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
