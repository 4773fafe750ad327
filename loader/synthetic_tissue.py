"""Synthetic H&E tissue tiles made of regions of known tissue types, with patch labels.

A tile is a handful of irregular regions (a Voronoi partition of random seeds whose
coordinates are warped by smooth noise), each of one type:

====  ==========  ===========================================================================
 id   name        appearance
====  ==========  ===========================================================================
 0    background  glass: near white (mean RGB > 240), no stain
 1    epithelium  pale pink cytoplasm, a dense sheet of large round pale nuclei
 2    stroma      strong eosin with wavy collagen fibres, a few thin dark spindle nuclei
 3    lymphoid    packed small round very dark nuclei
 4    adipose     large empty (white) cells with thin pink membranes
====  ==========  ===========================================================================

Stain concentrations become an image by Beer-Lambert with the Ruifrok & Johnston H&E vectors
(``loader.synthetic.HE_STAIN_MATRIX``), jittered per tile, then blurred and noised. The pixel truth
(``tissue_map``) is known; training uses only the patch labels: which of the tissue types 1..4
cover at least ``min_fraction`` of the tile. Adipose is bright like background, so the
HistoSegNet background map needs its exception rule there. Everything is drawn from
``numpy.random.default_rng(seed)``; a tile is byte-identical for the same seed and arguments.

Command line::

    python -m loader.synthetic_tissue OUT_DIR --n 8 --seed 0 --size 224

writes ``OUT_DIR/images/<stem>.png``, ``OUT_DIR/labels.csv`` (the ``patch_labels`` reader's
layout: ``name,<class>...`` with 0/1 entries) and ``OUT_DIR/tissue/<stem>.png`` (the pixel truth).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from misc.errors import UserError, cli_main
from misc.io import write_image, write_label
from loader.synthetic import HE_STAIN_MATRIX, tile_seed

#: Tissue types ``{id: (name, (R, G, B) display colour)}``; the same as
#: ``opt/histosegnet_class_info/synthetic_tissue.json``.
TISSUE_TYPES: dict[int, tuple[str, tuple[int, int, int]]] = {
    0: ("background", (255, 255, 255)),
    1: ("epithelium", (0, 0, 128)),
    2: ("stroma", (3, 155, 229)),
    3: ("lymphoid", (142, 36, 255)),
    4: ("adipose", (228, 196, 136)),
}
#: The classifier's classes: the tissue types except background, in id order.
PATCH_CLASSES: tuple[str, ...] = tuple(name for key, (name, _) in sorted(TISSUE_TYPES.items()) if key > 0)
#: Probability that a region gets each type (ids 0..4).
TYPE_P = np.array([0.12, 0.26, 0.26, 0.18, 0.18])
MIN_SIDE, MAX_SIDE = 32, 4096


class TissueTile(NamedTuple):
    """One tile.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        tissue_map: (H, W) int32 tissue-type ids (0..4).
        labels: (4,) int64 multi-hot patch labels of :data:`PATCH_CLASSES`.
    """

    image: np.ndarray
    tissue_map: np.ndarray
    labels: np.ndarray


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """(H, W) float32 Gaussian-smoothed white noise rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def region_map(rng: np.random.Generator, shape: tuple[int, int], regions: tuple[int, int] = (2, 5),
               warp: float = 0.08) -> np.ndarray:
    """(H, W) int32 tissue types of a warped Voronoi partition.

    Args:
        regions: inclusive range of the number of seeds.
        warp: displacement amplitude of the region borders as a fraction of the tile side.
    """
    h, w = shape
    n = int(rng.integers(regions[0], regions[1] + 1))
    seeds = rng.uniform((0, 0), (h, w), size=(n, 2))
    types = rng.choice(len(TYPE_P), size=n, p=TYPE_P)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    amplitude = warp * max(h, w)
    rows = rows + amplitude * _smooth_field(rng, shape, max(h, w) / 10)
    cols = cols + amplitude * _smooth_field(rng, shape, max(h, w) / 10)
    distance = (rows[..., None] - seeds[:, 0]) ** 2 + (cols[..., None] - seeds[:, 1]) ** 2
    return types[np.argmin(distance, axis=-1)].astype(np.int32)


def _nearest_seed(rng: np.random.Generator, shape: tuple[int, int], spacing: float,
                  jitter: float) -> tuple[np.ndarray, np.ndarray]:
    """Seeds on a jittered grid of ``spacing`` px: (H, W) float32 distance to the nearest seed
    and (H, W) int64 index of that seed."""
    h, w = shape
    grid_r, grid_c = np.mgrid[spacing / 2 : h : spacing, spacing / 2 : w : spacing]
    centres = np.stack([grid_r.ravel(), grid_c.ravel()], 1) + rng.normal(0, jitter * spacing, (grid_r.size, 2))
    centres = np.clip(np.rint(centres), 0, [h - 1, w - 1]).astype(np.int64)
    mask = np.ones(shape, bool)
    mask[centres[:, 0], centres[:, 1]] = False
    distance, (near_r, near_c) = ndimage.distance_transform_edt(mask, return_indices=True)
    return distance.astype(np.float32), near_r * w + near_c


def _nuclei(rng: np.random.Generator, shape: tuple[int, int], spacing: float, radius: tuple[float, float],
            jitter: float = 0.25) -> np.ndarray:
    """(H, W) float32 in [0, 1]: round nuclei on a jittered grid, radii drawn per nucleus."""
    distance, nearest = _nearest_seed(rng, shape, spacing, jitter)
    radii = rng.uniform(radius[0], radius[1], shape[0] * shape[1]).astype(np.float32)
    return np.clip(radii[nearest] - distance + 0.5, 0, 1)


def _membranes(rng: np.random.Generator, shape: tuple[int, int], spacing: float) -> np.ndarray:
    """(H, W) float32 in [0, 1]: thin walls between neighbouring fat cells (Voronoi edges)."""
    _, nearest = _nearest_seed(rng, shape, spacing, 0.3)
    edge = np.zeros(shape, bool)
    edge[1:, :] |= nearest[1:, :] != nearest[:-1, :]
    edge[:, 1:] |= nearest[:, 1:] != nearest[:, :-1]
    return ndimage.gaussian_filter(edge.astype(np.float32), 0.5) * 2.0


def _fibres(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 in [0, 1]: wavy parallel collagen bands at a random angle."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    phase = 6.0 * _smooth_field(rng, shape, 12.0)
    along = rows * np.cos(angle) + cols * np.sin(angle)
    return 0.5 + 0.5 * np.sin(2 * np.pi * along / rng.uniform(5, 9) + phase)


def _spindles(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 in [0, 1]: sparse elongated dark nuclei."""
    n = max(1, int(shape[0] * shape[1] / 1500))
    canvas = np.zeros(shape, np.float32)
    centres = rng.integers(0, shape, size=(n, 2))
    canvas[centres[:, 0], centres[:, 1]] = 1.0
    blob = ndimage.gaussian_filter(canvas, (1.2, 4.0))
    return np.clip(blob / (blob.max() + 1e-12) * 2.5, 0, 1)


def stain_maps(rng: np.random.Generator, tissue: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float32 haematoxylin and eosin concentrations (natural-log OD) for a type map."""
    shape = tissue.shape
    texture = 1 + 0.15 * _smooth_field(rng, shape, 6.0)
    epithelial_nuclei = _nuclei(rng, shape, 11.0, (3.5, 4.8))
    lymphoid_nuclei = _nuclei(rng, shape, 6.0, (2.0, 2.8), jitter=0.15)
    fat_walls = _membranes(rng, shape, 22.0)
    fibres = _fibres(rng, shape)
    spindles = _spindles(rng, shape)
    haem = np.select(
        [tissue == 1, tissue == 2, tissue == 3, tissue == 4],
        [0.06 + 0.55 * epithelial_nuclei, 0.03 + 0.9 * spindles, 0.08 + 1.3 * lymphoid_nuclei, 0.01 + 0.05 * fat_walls],
        default=0.0,
    )
    eosin = np.select(
        [tissue == 1, tissue == 2, tissue == 3, tissue == 4],
        [0.30 * (1 - 0.5 * epithelial_nuclei), 0.45 + 0.35 * fibres, 0.12, 0.02 + 0.55 * fat_walls],
        default=0.015,
    )
    return (haem * texture).astype(np.float32), (eosin * texture).astype(np.float32)


def compose(rng: np.random.Generator, haem: np.ndarray, eosin: np.ndarray, stain_jitter: float = 0.05,
            noise_std: float = 2.0) -> np.ndarray:
    """(H, W, 3) uint8 Beer-Lambert RGB of the concentrations, with stain jitter, blur, noise."""
    stains = np.clip(HE_STAIN_MATRIX + rng.normal(0, stain_jitter, HE_STAIN_MATRIX.shape), 0.01, None)
    stains = (stains / np.linalg.norm(stains, axis=1, keepdims=True)).astype(np.float32)
    density = haem[..., None] * stains[0] + eosin[..., None] * stains[1]
    intensity = ndimage.gaussian_filter(255.0 * np.exp(-density), (0.6, 0.6, 0))
    intensity += rng.normal(0, noise_std, intensity.shape)
    return np.clip(np.rint(intensity), 0, 255).astype(np.uint8)


def patch_labels(tissue: np.ndarray, min_fraction: float = 0.02) -> np.ndarray:
    """(4,) int64 multi-hot: tissue types 1..4 covering at least ``min_fraction`` of the tile."""
    fractions = np.bincount(tissue.ravel(), minlength=len(TISSUE_TYPES))[1:] / tissue.size
    return (fractions >= min_fraction).astype(np.int64)


def generate_tissue_tile(seed: int, shape: tuple[int, int] = (224, 224), min_fraction: float = 0.02) -> TissueTile:
    """One synthetic tissue tile (deterministic in ``seed`` and the arguments).

    Raises:
        UserError: a side outside 32..4096 px or ``min_fraction`` outside [0, 1).
    """
    if len(shape) != 2 or any(int(s) != s or not MIN_SIDE <= s <= MAX_SIDE for s in shape):
        raise UserError(f"tissue tile shape {tuple(shape)} is not (H, W) with integers in [{MIN_SIDE}, {MAX_SIDE}]")
    if not 0 <= min_fraction < 1:
        raise UserError(f"min_fraction {min_fraction} is outside [0, 1)")
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    tissue = region_map(rng, shape)
    haem, eosin = stain_maps(rng, tissue)
    return TissueTile(compose(rng, haem, eosin), tissue, patch_labels(tissue, min_fraction))


def write_dataset(out_dir: str | Path, n: int, seed: int = 0, size: int = 224) -> Path:
    """Write ``n`` tiles in the ``patch_labels`` layout plus their pixel truth (see module doc)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "tissue").mkdir(parents=True, exist_ok=True)
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", *PATCH_CLASSES])
        for index in range(n):
            tile = generate_tissue_tile(tile_seed(seed, index), (size, size))
            stem = f"tissue_{index:04d}"
            write_image(out / "images" / f"{stem}.png", tile.image)
            write_label(out / "tissue" / f"{stem}.png", tile.tissue_map)
            writer.writerow([stem, *tile.labels.tolist()])
    return out


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loader.synthetic_tissue", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    if args.n < 1:
        raise UserError(f"--n {args.n}: expected at least one tile")
    print(write_dataset(args.out_dir, args.n, args.seed, args.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
