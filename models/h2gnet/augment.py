"""The refinement stage's augmentations (the published ``batch_gen2`` keys).

Geometric, applied identically to the thumbnail, the heatmap and the mask: ``rotate_ll``
(k x 90 degree rotation, k uniform in 0..3) and ``flip`` (a random axis). Colour, on the
thumbnail only: ``hsv`` (hue shifted by up to +-``hue`` on OpenCV's 0-180 scale, cyclic;
saturation shifted by up to +-``saturation`` on 0-255), ``gamma`` (``rgb ** g``, g uniform in a
range) and ``mult`` (multiplicative brightness, factor uniform in a range, clipped to 1). Every
operation is applied with probability ``p``. The heatmap is never interpolated (90 degree
rotations and flips move whole pixels), so it keeps its nearest-neighbour values.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from misc.errors import UserError


@dataclass(frozen=True)
class RefineAugment:
    """Augmentation settings (``train.refine.augment`` in ``opt/h2gnet.yaml``).

    Attributes:
        p: probability of each operation.
        hue: maximum hue shift, OpenCV units (0-180 = 0-360 degrees).
        saturation: maximum saturation shift, 0-255 units.
        gamma: (low, high) range of the gamma exponent.
        brightness: (low, high) range of the multiplicative brightness factor.
    """

    p: float = 0.5
    hue: float = 10.0
    saturation: float = 20.0
    gamma: tuple[float, float] = (0.7, 1.4)
    brightness: tuple[float, float] = (0.8, 1.2)

    def __post_init__(self) -> None:
        if not 0 <= self.p <= 1:
            raise UserError(f"refine augmentation p {self.p} is outside [0, 1]")
        for name, (low, high) in (("gamma", self.gamma), ("brightness", self.brightness)):
            if not 0 < low <= high:
                raise UserError(f"refine augmentation {name} range ({low}, {high}) must satisfy 0 < low <= high")

    @classmethod
    def from_config(cls, options: dict | None) -> "RefineAugment":
        """Settings from a YAML mapping (missing keys keep their defaults)."""
        options = dict(options or {})
        for key in ("gamma", "brightness"):
            if key in options:
                options[key] = tuple(float(v) for v in options[key])
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError(f"unknown refine augmentation keys {unknown}; expected {sorted(cls.__dataclass_fields__)}")
        return cls(**options)


def shift_hsv(rgb: np.ndarray, hue: float, saturation: float) -> np.ndarray:
    """(H, W, 3) float32 RGB in 0-1 with hue shifted by ``hue`` (0-180 scale, cyclic) and
    saturation by ``saturation`` (0-255 scale, clipped)."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2HSV)  # H 0-360, S, V 0-1
    hsv[..., 0] = (hsv[..., 0] + 2.0 * hue) % 360.0
    hsv[..., 1] = np.clip(hsv[..., 1] + saturation / 255.0, 0.0, 1.0)
    return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0.0, 1.0)


def augment_refine(rgb: np.ndarray, heatmap: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                   settings: RefineAugment = RefineAugment()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented refinement sample.

    Args:
        rgb: (S, S, 3) float32 thumbnail in 0-1.
        heatmap: (S, S) float32 tumour probability in 0-1.
        mask: (S, S) integer class map (0 background, 1 tumour).
        rng: the sample's generator.

    Returns:
        ``(rgb, heatmap, mask)`` with the same shapes and dtypes, contiguous.
    """
    if rgb.shape[:2] != heatmap.shape or heatmap.shape != mask.shape:
        raise UserError(f"refinement sample shapes differ: rgb {rgb.shape}, heatmap {heatmap.shape}, mask {mask.shape}")
    if rng.random() < settings.p:
        k = int(rng.integers(4))
        rgb, heatmap, mask = (np.rot90(a, k, axes=(0, 1)) for a in (rgb, heatmap, mask))
    if rng.random() < settings.p:
        axis = int(rng.integers(2))
        rgb, heatmap, mask = (np.flip(a, axis=axis) for a in (rgb, heatmap, mask))
    rgb = np.ascontiguousarray(rgb, dtype=np.float32)
    if rng.random() < settings.p:
        rgb = shift_hsv(rgb, rng.uniform(-settings.hue, settings.hue), rng.uniform(-settings.saturation, settings.saturation))
    if rng.random() < settings.p:
        rgb = np.power(rgb, np.float32(rng.uniform(*settings.gamma)))
    if rng.random() < settings.p:
        rgb = np.clip(rgb * np.float32(rng.uniform(*settings.brightness)), 0.0, 1.0)
    return rgb.astype(np.float32, copy=False), np.ascontiguousarray(heatmap), np.ascontiguousarray(mask)
