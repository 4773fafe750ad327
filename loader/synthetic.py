"""Built-in synthetic H&E tiles with instance and type labels (no download needed).

A tile is composed physically: haematoxylin and eosin concentration maps are turned into
optical density with the Ruifrok & Johnston stain vectors (``skimage.color.rgb_from_hed``),
jittered per tile, and into intensity by Beer-Lambert, ``I = 255 * exp(-OD)``; then a mild
blur and sensor noise are added.

Nuclei are star-shaped polygons around ellipses, of three types that differ in size,
elongation, stain intensity and chromatin texture. Most nuclei grow in clusters in which
neighbours touch or overlap (the later-drawn nucleus owns the shared pixels), so simple
thresholding plus connected components merges them; the rest are scattered in a textured,
fibrous eosin stroma. Everything is drawn from ``numpy.random.default_rng(seed)``, so a tile
is byte-identical for the same seed and arguments.

Command line::

    python -m loader.synthetic OUT_DIR --n 8 --seed 0 --size 256

writes the ``folder`` dataset layout: ``OUT_DIR/images/<stem>.png`` (RGB),
``OUT_DIR/inst/<stem>.npy`` (int32 instance map) and ``OUT_DIR/types/<stem>.png`` (16-bit
type map).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from scipy import ndimage
from skimage.color import rgb_from_hed
from skimage.measure import label

from misc.errors import UserError, cli_main
from misc.io import write_image, write_label
from misc.utils import remap_label

#: Nucleus types: ``{type_id: (name, (R, G, B) display colour)}``; 0 is background.
NUCLEUS_TYPES: dict[int, tuple[str, tuple[int, int, int]]] = {
    1: ("epithelial", (0, 200, 0)),
    2: ("inflammatory", (230, 0, 0)),
    3: ("spindle", (0, 90, 255)),
}

#: Ruifrok & Johnston unit stain vectors (rows: haematoxylin, eosin) in RGB optical density.
HE_STAIN_MATRIX: np.ndarray = rgb_from_hed[:2] / np.linalg.norm(rgb_from_hed[:2], axis=1, keepdims=True)

POLYGON_VERTICES = 32
MIN_INSTANCE_AREA = 6
MIN_TILE_SIDE, MAX_TILE_SIDE = 16, 10000


@dataclass(frozen=True)
class NucleusStyle:
    """Appearance of one nucleus type; lengths in pixels, concentrations in natural-log OD.

    Attributes:
        semi_major: (low, high) range of the semi-major axis.
        aspect: (low, high) range of semi-minor / semi-major.
        haematoxylin: (low, high) range of the mean haematoxylin concentration.
        chromatin: relative amplitude of the granular chromatin texture.
        rim: relative darkening of the nuclear membrane (one-pixel rim).
        wobble: maximum relative amplitude of the boundary irregularity.
    """

    semi_major: tuple[float, float]
    aspect: tuple[float, float]
    haematoxylin: tuple[float, float]
    chromatin: float
    rim: float
    wobble: float


#: Per type: big round pale vesicular epithelial, small dark round inflammatory,
#: long thin mid-dark spindle nuclei.
NUCLEUS_STYLES: dict[int, NucleusStyle] = {
    1: NucleusStyle(semi_major=(8.0, 11.0), aspect=(0.70, 0.92), haematoxylin=(0.55, 0.75),
                    chromatin=0.25, rim=0.45, wobble=0.07),
    2: NucleusStyle(semi_major=(4.0, 5.5), aspect=(0.82, 1.0), haematoxylin=(1.35, 1.65),
                    chromatin=0.08, rim=0.0, wobble=0.04),
    3: NucleusStyle(semi_major=(10.0, 15.0), aspect=(0.22, 0.32), haematoxylin=(0.90, 1.10),
                    chromatin=0.15, rim=0.1, wobble=0.05),
}

#: Type probabilities for a cluster and for a scattered nucleus (order: types 1, 2, 3).
CLUSTER_TYPE_P = (0.55, 0.25, 0.20)
SCATTER_TYPE_P = (0.20, 0.45, 0.35)
#: Inclusive range of nuclei per cluster, per type.
CLUSTER_SIZES = {1: (4, 12), 2: (3, 8), 3: (3, 6)}


class NucleusLayout(NamedTuple):
    """Nuclei of a tile in drawing order (later ones occlude earlier ones); N nuclei.

    Attributes:
        centres: (N, 2) float64 (row, col) centres in pixels.
        semi_axes: (N, 2) float64 (major, minor) semi-axes in pixels.
        angles: (N,) float64 orientation of the major axis, radians from the +col axis.
        types: (N,) int32 type ids (keys of :data:`NUCLEUS_TYPES`).
        haematoxylin: (N,) float64 mean haematoxylin concentration (natural-log OD).
        polygons: (N, K, 2) float64 outline vertices as (x, y) = (col, row) in pixels.
    """

    centres: np.ndarray
    semi_axes: np.ndarray
    angles: np.ndarray
    types: np.ndarray
    haematoxylin: np.ndarray
    polygons: np.ndarray


def _radial_extent(semi_axes: np.ndarray, angles: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Distance from an ellipse centre to its edge along ``direction`` (radians); broadcasts."""
    major, minor = semi_axes[..., 0], semi_axes[..., 1]
    rel = direction - angles
    return major * minor / np.sqrt((minor * np.cos(rel)) ** 2 + (major * np.sin(rel)) ** 2)


class _Placer:
    """Accumulates non-colliding nuclei; collisions are judged along the line of centres."""

    def __init__(self, shape: tuple[int, int], capacity: int) -> None:
        self.shape = shape
        self.centres = np.zeros((capacity, 2))
        self.semi_axes = np.zeros((capacity, 2))
        self.angles = np.zeros(capacity)
        self.types = np.zeros(capacity, dtype=np.int32)
        self.count = 0

    def fits(self, centre: np.ndarray, semi_axes: np.ndarray, angle: float, gap: float, skip: int = -1) -> bool:
        """Whether a nucleus fits inside the tile with centre distance >= gap * (sum of extents).

        ``skip`` is the index of a neighbour exempt from the test (the cluster parent).
        """
        if not (0 <= centre[0] < self.shape[0] and 0 <= centre[1] < self.shape[1]):
            return False
        n = self.count
        if n == 0:
            return True
        delta = centre - self.centres[:n]
        distance = np.hypot(delta[:, 0], delta[:, 1])
        direction = np.arctan2(delta[:, 0], delta[:, 1])
        reach = _radial_extent(self.semi_axes[:n], self.angles[:n], direction)
        reach = reach + _radial_extent(semi_axes, angle, direction)
        clash = distance < gap * reach
        if 0 <= skip < n:
            clash[skip] = False
        return not clash.any()

    def add(self, centre: np.ndarray, semi_axes: np.ndarray, angle: float, type_id: int) -> int:
        """Append a nucleus and return its index."""
        i = self.count
        self.centres[i], self.semi_axes[i], self.angles[i], self.types[i] = centre, semi_axes, angle, type_id
        self.count += 1
        return i


def _sample_shape(rng: np.random.Generator, type_id: int, scale: float) -> np.ndarray:
    """(major, minor) semi-axes in pixels for one nucleus of ``type_id``."""
    style = NUCLEUS_STYLES[type_id]
    major = rng.uniform(*style.semi_major) * scale
    return np.array([major, major * rng.uniform(*style.aspect)])


def _grow_cluster(rng: np.random.Generator, placer: _Placer, type_id: int, size: int, scale: float) -> None:
    """Grow one cluster of up to ``size`` nuclei, each touching or overlapping a member.

    A child sits at ``f * (extent_parent + extent_child)`` from its parent along a random
    direction, with ``f`` in [0.78, 1.0]: f < 1 overlaps the parent (the child is drawn later
    and occludes it), f near 1 touches it. Spindle clusters are bundles of parallel nuclei.
    """
    bundle_angle = rng.uniform(0, math.pi)
    for _ in range(20):
        semi_axes = _sample_shape(rng, type_id, scale)
        angle = bundle_angle + rng.normal(0, 0.12) if type_id == 3 else rng.uniform(0, math.pi)
        centre = rng.uniform((0, 0), placer.shape)
        if placer.fits(centre, semi_axes, angle, gap=1.0):
            members = [placer.add(centre, semi_axes, angle, type_id)]
            break
    else:
        return
    for _ in range(4 * size):
        if len(members) >= size:
            break
        parent = members[rng.integers(len(members))]
        semi_axes = _sample_shape(rng, type_id, scale)
        if type_id == 3:
            angle = bundle_angle + rng.normal(0, 0.12)
            along = rng.random() < 0.3
            direction = bundle_angle + (0.0 if along else math.pi / 2) + rng.normal(0, 0.25) + math.pi * rng.integers(2)
        else:
            angle = rng.uniform(0, math.pi)
            direction = rng.uniform(0, 2 * math.pi)
        reach = _radial_extent(placer.semi_axes[parent], placer.angles[parent], direction)
        reach = reach + _radial_extent(semi_axes, angle, direction)
        offset = rng.uniform(0.78, 1.0) * reach * np.array([math.sin(direction), math.cos(direction)])
        centre = placer.centres[parent] + offset
        if placer.fits(centre, semi_axes, angle, gap=0.8, skip=parent):
            members.append(placer.add(centre, semi_axes, angle, type_id))


def _outline_polygons(rng: np.random.Generator, centres: np.ndarray, semi_axes: np.ndarray,
                      angles: np.ndarray, types: np.ndarray) -> np.ndarray:
    """(N, K, 2) (x, y) star-shaped outlines: ellipses with low-order radial wobble."""
    n = len(centres)
    t = np.linspace(0, 2 * math.pi, POLYGON_VERTICES, endpoint=False)
    wobble_max = np.array([0.0] + [NUCLEUS_STYLES[k].wobble for k in sorted(NUCLEUS_STYLES)])[types]
    amplitude = rng.uniform(0, 1, (n, 2)) * wobble_max[:, None]
    phase = rng.uniform(0, 2 * math.pi, (n, 2))
    radius = 1 + amplitude[:, :1] * np.cos(2 * t + phase[:, :1]) + amplitude[:, 1:] * np.cos(3 * t + phase[:, 1:])
    local_x = semi_axes[:, :1] * np.cos(t) * radius
    local_y = semi_axes[:, 1:] * np.sin(t) * radius
    cos_a, sin_a = np.cos(angles)[:, None], np.sin(angles)[:, None]
    x = centres[:, 1:] + local_x * cos_a - local_y * sin_a
    y = centres[:, :1] + local_x * sin_a + local_y * cos_a
    return np.stack([x, y], axis=-1)


def sample_layout(rng: np.random.Generator, shape: tuple[int, int], nuclei_density: float = 8.0,
                  cluster_fraction: float = 0.6, nucleus_scale: float = 1.0) -> NucleusLayout:
    """Place the nuclei of one tile.

    Args:
        rng: the tile's generator (the only source of randomness).
        shape: (H, W) of the tile in pixels.
        nuclei_density: expected nuclei per 100 x 100 pixels (Poisson).
        cluster_fraction: share of the expected nuclei grown in touching clusters.
        nucleus_scale: multiplies every nucleus size (1.0 ~ 40x; 0.5 ~ 20x).

    Returns:
        The layout, clustered nuclei first, then scattered ones; each cluster in growth order.
    """
    height, width = shape
    expected = nuclei_density * height * width / 1e4
    target = int(rng.poisson(expected))
    placer = _Placer(shape, capacity=target + max(CLUSTER_SIZES[t][1] for t in CLUSTER_SIZES))
    clustered_target = round(cluster_fraction * target)
    for _ in range(4 * target):
        if placer.count >= clustered_target:
            break
        type_id = int(rng.choice(3, p=CLUSTER_TYPE_P)) + 1
        low, high = CLUSTER_SIZES[type_id]
        size = min(int(rng.integers(low, high + 1)), clustered_target - placer.count)
        _grow_cluster(rng, placer, type_id, size, nucleus_scale)
    stroma_angle = rng.uniform(0, math.pi)
    for _ in range(20 * target):
        if placer.count >= target:
            break
        type_id = int(rng.choice(3, p=SCATTER_TYPE_P)) + 1
        semi_axes = _sample_shape(rng, type_id, nucleus_scale)
        angle = stroma_angle + rng.normal(0, 0.3) if type_id == 3 else rng.uniform(0, math.pi)
        centre = rng.uniform((0, 0), shape)
        if placer.fits(centre, semi_axes, angle, gap=1.05):
            placer.add(centre, semi_axes, angle, type_id)
    n = placer.count
    centres, semi_axes, angles, types = placer.centres[:n], placer.semi_axes[:n], placer.angles[:n], placer.types[:n]
    h_ranges = np.array([(0.0, 0.0)] + [NUCLEUS_STYLES[k].haematoxylin for k in sorted(NUCLEUS_STYLES)])[types]
    haematoxylin = rng.uniform(h_ranges[:, 0], h_ranges[:, 1]) if n else np.zeros(0)
    polygons = _outline_polygons(rng, centres, semi_axes, angles, types)
    return NucleusLayout(centres, semi_axes, angles, types, haematoxylin, polygons)


def rasterise_layout(layout: NucleusLayout, shape: tuple[int, int]) -> np.ndarray:
    """Draw the nuclei in order; later nuclei own the pixels they share with earlier ones.

    Each instance keeps only its largest 8-connected piece; instances smaller than
    :data:`MIN_INSTANCE_AREA` pixels are dropped.

    Returns:
        (H, W) int32 map where nucleus ``i`` of the layout has id ``i + 1`` (ids of dropped
        nuclei are absent, so ids need not be contiguous); 0 = background.
    """
    raw = np.zeros(shape, dtype=np.int32)
    subpixel = 8
    for i, polygon in enumerate(layout.polygons):
        cv2.fillPoly(raw, [np.round(polygon * subpixel).astype(np.int32)], color=i + 1, shift=3)
    return _largest_pieces(raw)


def _largest_pieces(raw: np.ndarray) -> np.ndarray:
    """Keep each id's largest 8-connected piece when it is at least MIN_INSTANCE_AREA pixels."""
    pieces = label(raw, connectivity=2, background=0)
    n_pieces = int(pieces.max())
    if n_pieces == 0:
        return raw
    piece_id = np.zeros(n_pieces + 1, dtype=np.int64)
    piece_id[pieces.ravel()] = raw.ravel()
    piece_area = np.bincount(pieces.ravel(), minlength=n_pieces + 1)
    order = np.lexsort((piece_area[1:], piece_id[1:])) + 1
    last_of_id = np.r_[piece_id[order][1:] != piece_id[order][:-1], True]
    keep = np.zeros(n_pieces + 1, dtype=bool)
    keep[order[last_of_id]] = True
    keep &= piece_area >= MIN_INSTANCE_AREA
    keep[0] = False
    return np.where(keep[pieces], raw, 0).astype(np.int32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """(H, W) float32 smooth noise, about unit standard deviation, features ~``cell`` pixels."""
    height, width = shape
    coarse = rng.standard_normal((int(height / cell) + 3, int(width / cell) + 3))
    coarse = ndimage.gaussian_filter(coarse, 1.0, mode="wrap")
    coarse = ((coarse - coarse.mean()) / (coarse.std() + 1e-12)).astype(np.float32)
    cell_px = int(round(cell))
    full = cv2.resize(coarse, (coarse.shape[1] * cell_px, coarse.shape[0] * cell_px), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(full[:height, :width])


def _fibre_map(rng: np.random.Generator, shape: tuple[int, int], angle: float) -> np.ndarray:
    """(H, W) float32 in [0, 1]: thin wavy collagen fibres roughly along ``angle``."""
    height, width = shape
    n = max(1, int(height * width / 250))
    steps = 5
    start = rng.uniform((0, 0), (width, height), size=(n, 2))
    heading = angle + rng.normal(0, 0.3, n)
    turn = rng.normal(0, 0.15, (n, steps))
    step = rng.uniform(6, 14, (n, 1))
    headings = heading[:, None] + np.cumsum(turn, axis=1)
    moves = np.stack([np.cos(headings), np.sin(headings)], axis=-1) * step[..., None]
    points = start[:, None, :] + np.concatenate([np.zeros((n, 1, 2)), np.cumsum(moves, axis=1)], axis=1)
    canvas = np.zeros(shape, dtype=np.uint8)
    cv2.polylines(canvas, list(np.round(points * 4).astype(np.int32)), isClosed=False, color=255,
                  thickness=1, lineType=cv2.LINE_AA, shift=2)
    return ndimage.gaussian_filter(canvas.astype(np.float32) / 255.0, 0.6)


def _red_cell_map(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 in [0, 1]: a few unlabelled red blood cells (discs ~7 px across)."""
    height, width = shape
    n = int(rng.poisson(0.6 * height * width / 1e4))
    centres = np.round(rng.uniform((0, 0), (width, height), size=(n, 2)) * 4).astype(np.int32)
    radii = np.round(rng.uniform(3.0, 4.5, n) * 4).astype(np.int32)
    canvas = np.zeros(shape, dtype=np.uint8)
    for (x, y), radius in zip(centres, radii):
        cv2.circle(canvas, (int(x), int(y)), int(radius), color=255, thickness=-1, lineType=cv2.LINE_AA, shift=2)
    return canvas.astype(np.float32) / 255.0


def _inner_rim(inst_map: np.ndarray) -> np.ndarray:
    """(H, W) bool: instance pixels with a 4-neighbour of another value (edge of the tile excluded)."""
    rim = np.zeros(inst_map.shape, dtype=bool)
    differs_v = inst_map[1:, :] != inst_map[:-1, :]
    differs_h = inst_map[:, 1:] != inst_map[:, :-1]
    rim[1:, :] |= differs_v
    rim[:-1, :] |= differs_v
    rim[:, 1:] |= differs_h
    rim[:, :-1] |= differs_h
    return rim & (inst_map > 0)


def _jittered_stains(rng: np.random.Generator, jitter: float) -> np.ndarray:
    """(2, 3) unit H and E optical-density vectors perturbed by N(0, jitter) per component."""
    stains = np.clip(HE_STAIN_MATRIX + rng.normal(0, jitter, HE_STAIN_MATRIX.shape), 0.01, None)
    return stains / np.linalg.norm(stains, axis=1, keepdims=True)


def _stain_maps(rng: np.random.Generator, inst_map: np.ndarray, layout: NucleusLayout,
                stroma_angle: float) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float32 haematoxylin and eosin concentrations (natural-log OD) of the tile."""
    shape = inst_map.shape
    fibres = _fibre_map(rng, shape, stroma_angle)
    broad = _smooth_noise(rng, shape, 48.0)
    medium = _smooth_noise(rng, shape, 12.0)
    fibre_strength = _smooth_noise(rng, shape, 32.0)
    lumen_level = rng.uniform(1.3, 2.5)
    lumen = np.clip((broad - lumen_level) / 0.3, 0, 1)
    fibre_eosin = 0.35 * fibres * np.clip(0.6 + 0.4 * fibre_strength, 0, None)
    eosin = rng.uniform(0.22, 0.38) * (1 + 0.25 * medium) + fibre_eosin
    eosin *= 1 - 0.85 * lumen
    eosin += 0.6 * _red_cell_map(rng, shape)
    haem = (rng.uniform(0.03, 0.07) * (1 + 0.3 * medium)) * (1 - 0.85 * lumen)

    types = np.r_[0, layout.types]
    epithelial = (types[inst_map] == 1).astype(np.float32)
    cytoplasm = np.clip(ndimage.gaussian_filter(epithelial, 5.0) * 3.0, 0, 1)
    haem += 0.08 * cytoplasm
    eosin += 0.12 * cytoplasm

    chromatin_amp = np.array([0.0] + [NUCLEUS_STYLES[k].chromatin for k in sorted(NUCLEUS_STYLES)], np.float32)
    rim_amp = np.array([0.0] + [NUCLEUS_STYLES[k].rim for k in sorted(NUCLEUS_STYLES)], np.float32)
    base = np.r_[0.0, layout.haematoxylin].astype(np.float32)
    grain = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 1.0)
    grain = np.clip(grain / (grain.std() + 1e-12), -2.5, 2.5)
    nucleus = inst_map > 0
    texture = 1 + chromatin_amp[types[inst_map]] * grain + rim_amp[types[inst_map]] * _inner_rim(inst_map)
    nucleus_h = base[inst_map] * np.clip(texture, 0.2, None)
    haem = np.where(nucleus, nucleus_h + 0.03, haem)
    eosin = np.where(nucleus, 0.5 * eosin, eosin)
    return haem.astype(np.float32), np.clip(eosin, 0, None).astype(np.float32)


def _compose(rng: np.random.Generator, haem: np.ndarray, eosin: np.ndarray, stain_jitter: float,
             noise_std: float) -> np.ndarray:
    """Beer-Lambert H&E image from concentrations, with stain jitter, blur and noise.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    stains = _jittered_stains(rng, stain_jitter).astype(np.float32)
    strength = rng.uniform(1 - 3 * stain_jitter, 1 + 3 * stain_jitter, 2).astype(np.float32)
    optical_density = (haem * strength[0])[..., None] * stains[0] + (eosin * strength[1])[..., None] * stains[1]
    intensity = 255.0 * np.exp(-optical_density)
    sigma = rng.uniform(0.5, 0.9)
    intensity = ndimage.gaussian_filter(intensity, (sigma, sigma, 0))
    intensity += rng.normal(0, noise_std, intensity.shape).astype(np.float32)
    return np.clip(np.rint(intensity), 0, 255).astype(np.uint8)


def _check_arguments(shape: tuple[int, int], nuclei_density: float, cluster_fraction: float,
                     nucleus_scale: float, stain_jitter: float, noise_std: float) -> tuple[int, int]:
    """Validate tile arguments and return the shape as a pair of ints."""
    if len(shape) != 2 or any(int(s) != s or not MIN_TILE_SIDE <= s <= MAX_TILE_SIDE for s in shape):
        raise UserError(f"tile shape {tuple(shape)} is not (H, W) with integers in [{MIN_TILE_SIDE}, {MAX_TILE_SIDE}]")
    if not 0 <= nuclei_density <= 100:
        raise UserError(f"nuclei_density {nuclei_density} is outside [0, 100] nuclei per 100x100 pixels")
    if not 0 <= cluster_fraction <= 1:
        raise UserError(f"cluster_fraction {cluster_fraction} is outside [0, 1]")
    if not 0.1 <= nucleus_scale <= 10:
        raise UserError(f"nucleus_scale {nucleus_scale} is outside [0.1, 10]")
    if not 0 <= stain_jitter <= 0.2:
        raise UserError(f"stain_jitter {stain_jitter} is outside [0, 0.2]")
    if not 0 <= noise_std <= 50:
        raise UserError(f"noise_std {noise_std} is outside [0, 50] grey levels")
    return int(shape[0]), int(shape[1])


def generate_tile(seed: int, shape: tuple[int, int] = (256, 256), *, nuclei_density: float = 8.0,
                  cluster_fraction: float = 0.6, nucleus_scale: float = 1.0, stain_jitter: float = 0.03,
                  noise_std: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic H&E tile with its labels; byte-identical for the same arguments.

    Args:
        seed: seed of ``numpy.random.default_rng``, the only source of randomness.
        shape: (H, W) in pixels, each in [16, 10000].
        nuclei_density: expected nuclei per 100 x 100 pixels.
        cluster_fraction: share of nuclei grown in touching/overlapping clusters.
        nucleus_scale: multiplies nucleus sizes (1.0: epithelial nuclei ~16-22 px across).
        stain_jitter: standard deviation of the per-component stain-vector perturbation; stain
            strengths vary by +-3x this.
        noise_std: standard deviation of additive Gaussian noise, in grey levels.

    Returns:
        ``image`` (H, W, 3) uint8 RGB; ``inst_map`` (H, W) int32, 0 = background, ids 1..N,
        each instance one 8-connected piece; ``type_map`` (H, W) int32, 0 = background,
        instance pixels typed with keys of :data:`NUCLEUS_TYPES`.
    """
    if seed < 0:
        raise UserError(f"seed {seed} is negative; use an integer >= 0")
    shape = _check_arguments(shape, nuclei_density, cluster_fraction, nucleus_scale, stain_jitter, noise_std)
    rng = np.random.default_rng(seed)
    layout = sample_layout(rng, shape, nuclei_density, cluster_fraction, nucleus_scale)
    drawn = rasterise_layout(layout, shape)
    stroma_angle = rng.uniform(0, math.pi)
    haem, eosin = _stain_maps(rng, drawn, layout, stroma_angle)
    image = _compose(rng, haem, eosin, stain_jitter, noise_std)
    type_map = np.r_[0, layout.types].astype(np.int32)[drawn]
    return image, remap_label(drawn), type_map


def tile_seed(seed: int, index: int) -> int:
    """Seed of tile ``index`` of the dataset with ``seed`` (independent streams per tile)."""
    if seed < 0:
        raise UserError(f"dataset seed {seed} is negative; use an integer >= 0")
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0])


def generate_dataset(n: int, seed: int = 0, shape: tuple[int, int] = (256, 256),
                     **tile_options: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``n`` tiles ``(image, inst_map, type_map)``; tile ``i`` uses ``tile_seed(seed, i)``.

    ``tile_options`` are passed to :func:`generate_tile` (e.g. ``nuclei_density``).
    """
    if n < 0:
        raise UserError(f"number of tiles {n} is negative")
    return [generate_tile(tile_seed(seed, i), shape, **tile_options) for i in range(n)]


def write_dataset(out_dir: str | Path, n: int, seed: int = 0, shape: tuple[int, int] = (256, 256),
                  **tile_options: float) -> list[str]:
    """Write ``n`` tiles in the ``folder`` layout and return their stems.

    Files: ``images/<stem>.png`` (RGB), ``inst/<stem>.npy`` (int32), ``types/<stem>.png``
    (16-bit), with ``stem = tile_<i:04d>``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder; give a folder to write the dataset into")
    if n < 1:
        raise UserError(f"number of tiles {n} (--n) must be at least 1")
    stems = []
    for i in range(n):
        image, inst_map, type_map = generate_tile(tile_seed(seed, i), shape, **tile_options)
        stem = f"tile_{i:04d}"
        write_image(out_dir / "images" / f"{stem}.png", image)
        write_label(out_dir / "inst" / f"{stem}.npy", inst_map)
        write_label(out_dir / "types" / f"{stem}.png", type_map)
        stems.append(stem)
    return stems


class _ArgumentParser(argparse.ArgumentParser):
    """Argument parser whose errors are one-line :class:`UserError` messages."""

    def error(self, message: str):
        raise UserError(message)


def _parse_size(text: str) -> tuple[int, int]:
    """``"256"`` -> (256, 256); ``"200x300"`` -> (200, 300) as (H, W)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not N or HxW") from None
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"'{text}' is not N or HxW")
    return (values[0], values[-1])


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Write a synthetic dataset in the folder layout (images/, inst/, types/)."""
    parser = _ArgumentParser(prog="python -m loader.synthetic", description=main.__doc__)
    parser.add_argument("out_dir", type=Path, help="output folder (created if missing)")
    parser.add_argument("--n", type=int, default=8, help="number of tiles (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--size", type=_parse_size, default=(256, 256),
                        help="tile size N or HxW in pixels (default 256)")
    parser.add_argument("--density", type=float, default=8.0,
                        help="expected nuclei per 100x100 pixels (default 8)")
    args = parser.parse_args(argv)
    stems = write_dataset(args.out_dir, args.n, args.seed, args.size, nuclei_density=args.density)
    print(f"wrote {len(stems)} tiles of {args.size[0]}x{args.size[1]} to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
