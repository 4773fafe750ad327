"""H2G-Net's augmentations (the published ``src/utils/batch_generator.py``, in its order).

Geometric, applied identically to the image, the heatmap and the mask:

- ``rotate`` (``rotate_ll``): rotation by k x 90 degrees, k uniform in 0..3;
- ``flip``: with probability 0.5, a flip along a random axis.

Colour, on the RGB image only, in OpenCV's HSV space:

- ``hsv``: hue shifted by a uniform amount in [-hsv, hsv] (OpenCV's 0-180 scale, cyclic) and
  saturation by another in the same range (0-255 scale, clipped);
- ``gamma``: value channel ``V <- 255 (V / 255) ** g``, g uniform in the range (the published
  code raises the 0-255 value itself to the power, which saturates or blackens the image for any
  g away from 1; we apply gamma to the normalised value);
- ``mult``: value channel multiplied by a factor uniform in the range, clipped.

Each is applied when configured (``null`` turns it off). The published code converts through
uint8 for every colour step; here the HSV arithmetic stays in float. The heatmap is never
interpolated (rotations and flips move whole pixels). The published refinement run used
``rotate_ll``, ``flip``, ``mult [0.8, 1.2]`` and a Macenko stain augmentation (staintools; not
built here); its patch classifier's data used ``rotate_ll``, ``flip``, ``hsv 20`` and
``mult [0.8, 1.2]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from misc.errors import UserError


@dataclass(frozen=True)
class Augment:
    """Augmentation settings (``data.refine_augment`` / ``data.detect.augment`` in ``opt/h2gnet.yaml``).

    Attributes:
        rotate: random k x 90 degree rotations.
        flip: random flips (probability 0.5, random axis).
        hsv: maximum hue (0-180 scale) and saturation (0-255) shift, or None.
        gamma: (low, high) range of the value-channel gamma, or None.
        mult: (low, high) range of the value-channel multiplier, or None.
    """

    rotate: bool = True
    flip: bool = True
    hsv: float | None = 20.0
    gamma: tuple[float, float] | None = None
    mult: tuple[float, float] | None = (0.8, 1.2)

    def __post_init__(self) -> None:
        if self.hsv is not None and not 0 <= self.hsv <= 180:
            raise UserError(f"augmentation hsv {self.hsv} is outside [0, 180]")
        for name in ("gamma", "mult"):
            limits = getattr(self, name)
            if limits is not None and not (len(limits) == 2 and 0 < limits[0] <= limits[1]):
                raise UserError(f"augmentation {name} {limits} must be [low, high] with 0 < low <= high (or null)")

    @classmethod
    def from_config(cls, options: dict | None) -> "Augment":
        """Settings from a YAML mapping (missing keys keep their defaults)."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError(f"unknown augmentation keys {unknown}; expected {sorted(cls.__dataclass_fields__)}")
        for key in ("gamma", "mult"):
            if options.get(key) is not None:
                options[key] = tuple(float(v) for v in options[key])
        return cls(**options)

    @property
    def colour(self) -> bool:
        """Whether any colour operation is on."""
        return self.hsv is not None or self.gamma is not None or self.mult is not None


def shift_colour(rgb: np.ndarray, hue: float = 0.0, saturation: float = 0.0, gamma: float = 1.0,
                 mult: float = 1.0) -> np.ndarray:
    """(H, W, 3) float32 RGB in 0-1 after, in HSV: hue + ``hue`` (0-180 scale, cyclic), saturation
    + ``saturation`` (0-255 scale), value ``** gamma`` (normalised) then ``* mult`` (each clipped)."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2HSV)  # H 0-360, S, V 0-1
    hsv[..., 0] = (hsv[..., 0] + 2.0 * hue) % 360.0
    hsv[..., 1] = np.clip(hsv[..., 1] + saturation / 255.0, 0.0, 1.0)
    hsv[..., 2] = np.clip(np.power(hsv[..., 2], np.float32(gamma)) * np.float32(mult), 0.0, 1.0)
    return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0.0, 1.0)


def _geometry(arrays: list[np.ndarray], rng: np.random.Generator, settings: Augment) -> list[np.ndarray]:
    """The same random rotation and flip of every (H, W, ...) array."""
    if settings.rotate:
        k = int(rng.integers(4))
        arrays = [np.rot90(a, k, axes=(0, 1)) for a in arrays]
    if settings.flip and rng.random() < 0.5:
        axis = int(rng.integers(2))
        arrays = [np.flip(a, axis=axis) for a in arrays]
    return [np.ascontiguousarray(a) for a in arrays]


def _colour(rgb: np.ndarray, rng: np.random.Generator, settings: Augment) -> np.ndarray:
    """``rgb`` (float32 0-1) with the configured colour operations drawn from ``rng``."""
    if not settings.colour:
        return rgb
    hue = saturation = 0.0
    if settings.hsv is not None:
        hue, saturation = (float(v) for v in rng.uniform(-settings.hsv, settings.hsv, 2))
    gamma = float(rng.uniform(*settings.gamma)) if settings.gamma is not None else 1.0
    mult = float(rng.uniform(*settings.mult)) if settings.mult is not None else 1.0
    return shift_colour(rgb, hue, saturation, gamma, mult)


def augment_refine(rgb: np.ndarray, heatmap: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                   settings: Augment = Augment()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    rgb, heatmap, mask = _geometry([rgb, heatmap, mask], rng, settings)
    return _colour(rgb.astype(np.float32, copy=False), rng, settings), heatmap, mask


def augment_patch(patch: np.ndarray, rng: np.random.Generator, settings: Augment = Augment()) -> np.ndarray:
    """One augmented detection patch: (P, P, 3) uint8 RGB in, (P, P, 3) uint8 RGB out."""
    patch = _geometry([patch], rng, settings)[0]
    if not settings.colour:
        return patch
    rgb = _colour(patch.astype(np.float32) / 255.0, rng, settings)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
