"""HoVer-Net post-processing: NP probability + HV maps → instance map (marker watershed).

The steps follow the published ``__proc_np_hv``; each is a small function producing one thing:
foreground mask → HV edge map → energy → markers → watershed. Its size constants are tuned
for 40x; :func:`scale_params` adapts them to another magnification with ``s = mag / 40``:
areas × s², Sobel kernel × s (next odd, at least 3), opening radius × s.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage
from scipy.special import comb
from skimage.segmentation import watershed

from misc.errors import UserError


@dataclass(frozen=True)
class PostprocParams:
    """Post-processing constants (defaults: published values at 40x).

    Attributes:
        np_threshold: nuclear probability at or above which a pixel is foreground.
        min_area: foreground components with fewer pixels are removed.
        sobel_ksize: Sobel kernel size applied to the normalised h and v maps (odd).
        marker_threshold: edge strength at or above which a pixel is not a marker.
        opening_radius: radius in pixels of the elliptical opening of the markers (2 → 5×5).
        min_marker_area: markers with fewer pixels are removed.
        energy_blur: Gaussian blur kernel size of the energy landscape (odd; not scaled).
        base_mag: magnification the constants are tuned for.
    """

    np_threshold: float = 0.5
    min_area: int = 10
    sobel_ksize: int = 21
    marker_threshold: float = 0.4
    opening_radius: int = 2
    min_marker_area: int = 10
    energy_blur: int = 3
    base_mag: float = 40.0

    def __post_init__(self) -> None:
        for key, smallest in (("sobel_ksize", 3), ("energy_blur", 1)):
            value = getattr(self, key)
            if value < smallest or value % 2 != 1:
                raise UserError(f"postproc.{key} must be an odd integer >= {smallest}, got {value}")
        for key in ("min_area", "min_marker_area", "opening_radius"):
            if getattr(self, key) < 0:
                raise UserError(f"postproc.{key} must be >= 0, got {getattr(self, key)}")
        if self.base_mag <= 0:
            raise UserError(f"postproc.base_mag must be > 0, got {self.base_mag}")

    @classmethod
    def from_options(cls, options: dict) -> "PostprocParams":
        """Build from a ``postproc`` config mapping; unknown keys are errors."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise UserError(f"unknown postproc option(s) {unknown}; valid: {sorted(names)}")
        return cls(**options)


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def scale_params(params: PostprocParams, mag: float | None) -> PostprocParams:
    """Adapt the size constants to magnification ``mag`` (``None``: unchanged).

    With ``s = mag / base_mag``: ``min_area`` and ``min_marker_area`` × s² (rounded half up,
    at least 1), ``sobel_ksize`` × s (next odd integer, at least 3), ``opening_radius`` × s
    (rounded half up). E.g. at 20x: areas 10 → 3, Sobel 21 → 11, opening radius 2 → 1.
    """
    if mag is None or mag == params.base_mag:
        return params
    if mag <= 0:
        raise UserError(f"magnification must be > 0, got {mag}")
    scale = mag / params.base_mag
    ksize = math.ceil(params.sobel_ksize * scale - 1e-9)
    ksize += 1 - ksize % 2
    return dataclasses.replace(
        params,
        min_area=max(1, _round_half_up(params.min_area * scale**2)),
        min_marker_area=max(1, _round_half_up(params.min_marker_area * scale**2)),
        sobel_ksize=max(3, ksize),
        opening_radius=_round_half_up(params.opening_radius * scale),
        base_mag=float(mag),
    )


def remove_small_labels(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Drop labels with fewer than ``min_area`` pixels and renumber the rest 1..N.

    Args:
        labels: (H, W) int label image, 0 = background.

    Returns:
        (H, W) int32, survivors renumbered in order of their old labels.
    """
    counts = np.bincount(labels.ravel())
    keep = counts >= min_area
    keep[0] = False
    lookup = np.zeros(counts.size, np.int32)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lookup[labels]


def foreground_mask(np_prob: np.ndarray, threshold: float, min_area: int) -> np.ndarray:
    """(H, W) bool: ``np_prob >= threshold`` without 4-connected components under ``min_area`` px."""
    labels, _ = ndimage.label(np_prob >= threshold)
    return remove_small_labels(labels, min_area) > 0


def normalise(values: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1] as float32 (all zeros for a constant map)."""
    values = np.asarray(values, np.float32)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def sobel_kernels(ksize: int) -> tuple[np.ndarray, np.ndarray]:
    """1-D derivative and smoothing kernels of OpenCV's Sobel operator of any odd size.

    Returns:
        ``(derivative, smoothing)`` float64 of length ``ksize``: the binomial smoothing
        kernel of order ``ksize − 1`` and the binomial of order ``ksize − 2`` convolved with
        ``[-1, 0, 1]``, each scaled to unit absolute sum (OpenCV's up to a constant factor).
    """
    smoothing = comb(ksize - 1, np.arange(ksize))
    derivative = np.convolve(comb(ksize - 3, np.arange(ksize - 2)), [-1.0, 0.0, 1.0])
    return derivative / np.abs(derivative).sum(), smoothing / smoothing.sum()


def sobel(image: np.ndarray, ksize: int, axis: int) -> np.ndarray:
    """Sobel derivative of a (H, W) float32 map along ``axis`` (1 = x/columns, 0 = y/rows).

    Equal to ``cv2.Sobel`` up to a constant factor (same reflect-101 border), for any odd
    ``ksize`` (OpenCV stops at 31).
    """
    derivative, smoothing = sobel_kernels(ksize)
    kernel_x, kernel_y = (derivative, smoothing) if axis == 1 else (smoothing, derivative)
    return cv2.sepFilter2D(image, cv2.CV_32F, kernel_x.astype(np.float32), kernel_y.astype(np.float32))


def edge_map(hv: np.ndarray, mask: np.ndarray, ksize: int) -> np.ndarray:
    """Instance-boundary strength from the HV maps, in [0, 1], zero outside ``mask``.

    Args:
        hv: (H, W, 2) float, channel 0 = horizontal (x), channel 1 = vertical (y).
        mask: (H, W) bool foreground.

    Returns:
        (H, W) float32 ``max(1 − norm(∂h/∂x), 1 − norm(∂v/∂y))`` inside the mask.
    """
    grad_x = 1.0 - normalise(sobel(normalise(hv[..., 0]), ksize, axis=1))
    grad_y = 1.0 - normalise(sobel(normalise(hv[..., 1]), ksize, axis=0))
    return np.where(mask, np.maximum(grad_x, grad_y), np.float32(0.0))


def energy_map(edges: np.ndarray, mask: np.ndarray, blur: int) -> np.ndarray:
    """(H, W) float32 watershed landscape: ``−GaussianBlur((1 − edges) · mask)`` (basins at centres)."""
    return -cv2.GaussianBlur((1.0 - edges) * mask, (blur, blur), 0)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool ``mask`` with enclosed background (not 4-connected to the border) filled."""
    background, _ = ndimage.label(~mask)
    border = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    enclosed = np.ones(int(background.max()) + 1, bool)
    enclosed[border] = False
    enclosed[0] = False
    return mask | enclosed[background]


def marker_map(edges: np.ndarray, mask: np.ndarray, params: PostprocParams) -> np.ndarray:
    """Watershed seeds: foreground away from edges, holes filled, opened, small ones removed.

    Returns:
        (H, W) int32 markers 1..N.
    """
    seeds = fill_holes(mask & (edges < params.marker_threshold)).astype(np.uint8)
    if params.opening_radius > 0:
        side = 2 * params.opening_radius + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
        seeds = cv2.morphologyEx(seeds, cv2.MORPH_OPEN, kernel)
    labels, _ = ndimage.label(seeds)
    return remove_small_labels(labels, params.min_marker_area)


def check_maps(np_prob: np.ndarray, hv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and squeeze: ``np_prob`` (H, W) or (H, W, 1), ``hv`` (H, W, 2) → float32 arrays."""
    np_prob, hv = np.asarray(np_prob, np.float32), np.asarray(hv, np.float32)
    if np_prob.ndim == 3 and np_prob.shape[2] == 1:
        np_prob = np_prob[..., 0]
    if np_prob.ndim != 2:
        raise UserError(f"np_prob must be (H, W) or (H, W, 1), got shape {np_prob.shape}")
    if hv.shape != (*np_prob.shape, 2):
        raise UserError(f"hv must be (H, W, 2) = {(*np_prob.shape, 2)} to match np_prob, got {hv.shape}")
    return np_prob, hv


def instances_from_np_hv(np_prob: np.ndarray, hv: np.ndarray, params: PostprocParams = PostprocParams()) -> np.ndarray:
    """Instance map from the NP probability and HV maps (published ``__proc_np_hv``).

    Args:
        np_prob: (H, W) or (H, W, 1) float nuclear probability in [0, 1].
        hv: (H, W, 2) float horizontal/vertical offset maps.
        params: constants, already scaled to the image's magnification.

    Returns:
        (H, W) int32 instance map, ids 1..N contiguous, 0 = background.
    """
    np_prob, hv = check_maps(np_prob, hv)
    mask = foreground_mask(np_prob, params.np_threshold, params.min_area)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    edges = edge_map(hv, mask, params.sobel_ksize)
    markers = marker_map(edges, mask, params)
    energy = energy_map(edges, mask.astype(np.float32), params.energy_blur)
    inst_map = watershed(energy, markers, mask=mask).astype(np.int32, copy=False)
    if (np.bincount(inst_map.ravel())[1:] == 0).any():
        inst_map = remove_small_labels(inst_map, 1)
    return inst_map
