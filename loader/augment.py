"""Composable, seeded augmentations for image + label-map samples.

A sample is a dict ``{'image': (H, W, 3) uint8, 'inst_map': (H, W) int32, 'type_map': (H, W)
int32 (optional), ...}``. Geometric ops move the image and every other 2-D array of the same
(H, W) (instance, type, weight maps) together; label maps always use nearest-neighbour
sampling with 0 outside the image, so the ids after any op are a subset of the ids before it.
Image-only ops (blur, noise, colour, stain) leave the maps untouched. No op modifies its input.

A pipeline is data, e.g. read from ``opt/augment.yaml``::

    [{'op': 'affine', 'rotate': [-179, 179]}, {'op': 'flip', 'axis': 'horizontal', 'p': 0.5},
     {'op': 'one_of', 'ops': [{'op': 'gaussian_blur'}, {'op': 'median_blur'}]}]

Every key an entry leaves out comes from the op's defaults in the ``ops`` section of
``opt/augment.yaml`` (the published values, sources noted there). ``p`` (default 1) is the
probability that an entry runs. ``one_of`` runs one of its ``ops`` (uniformly) and
``random_order`` runs all of them in a random order. All randomness comes from the
``numpy.random.Generator`` passed to the pipeline, so a seed fixes the result.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
import yaml
from scipy import ndimage
from skimage.color import hed_from_rgb, rgb_from_hed

from loader.colour import lab_statistics, macenko_stains, reinhard_normalise, to_uint8
from loader.keys import LABEL_MAPS
from misc.errors import UserError

Sample = dict[str, Any]
OpFn = Callable[[Sample, np.random.Generator], Sample]

AUGMENT_YAML = Path(__file__).resolve().parents[1] / "opt" / "augment.yaml"

_INTERPOLATION = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
_BORDER = {"constant": cv2.BORDER_CONSTANT, "reflect": cv2.BORDER_REFLECT_101}
_CV_MAP_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32, np.float64))


# ----------------------------------------------------------------------------------------- parameters


def _range(op: str, key: str, value: Any, low: float = -math.inf, high: float = math.inf) -> tuple[float, float]:
    """Validate a ``[lo, hi]`` parameter with ``low <= lo <= hi <= high``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value, value]
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(isinstance(v, (int, float)) for v in value):
        raise UserError(f"augment op '{op}': '{key}' is {value!r}; expected a range [low, high]")
    lo, hi = float(value[0]), float(value[1])
    if not low <= lo <= hi <= high:
        raise UserError(f"augment op '{op}': '{key}' range {[lo, hi]} must satisfy {low} <= low <= high <= {high}")
    return lo, hi


def _odd_sizes(op: str, key: str, value: Any) -> np.ndarray:
    """The odd kernel sizes in a ``[lo, hi]`` range (both >= 1)."""
    lo, hi = _range(op, key, value, 1)
    sizes = np.arange(int(lo), int(hi) + 1)
    sizes = sizes[sizes % 2 == 1]
    if sizes.size == 0 or lo != int(lo) or hi != int(hi):
        raise UserError(f"augment op '{op}': '{key}' {value!r} holds no odd integer kernel size")
    return sizes


def _choice(op: str, key: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise UserError(f"augment op '{op}': '{key}' is {value!r}; expected one of {list(allowed)}")
    return value


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


# ----------------------------------------------------------------------------------------- sample helpers


def _label_keys(sample: Sample) -> list[str]:
    """Keys of the 2-D arrays shaped like the image (moved with it by geometric ops)."""
    shape = sample["image"].shape[:2]
    return [k for k, v in sample.items() if k != "image" and isinstance(v, np.ndarray) and v.shape == shape]


def _move_map(label_fn: Callable[[np.ndarray], np.ndarray], array: np.ndarray) -> np.ndarray:
    """``label_fn`` (nearest sampling, 0 outside) on a map of any dtype.

    Dtypes OpenCV cannot warp (bool, uint32, int64, float16, ...) go through an int32 map of
    pixel indices, so values are copied exactly.
    """
    if array.dtype in _CV_MAP_DTYPES:
        return label_fn(array)
    index = np.arange(1, array.size + 1, dtype=np.int32).reshape(array.shape)
    values = np.concatenate([np.zeros(1, array.dtype), array.ravel()])
    return values[label_fn(index)]


def _geometric(sample: Sample, image_fn: Callable[[np.ndarray], np.ndarray],
               label_fn: Callable[[np.ndarray], np.ndarray]) -> Sample:
    """A new sample with ``image_fn`` applied to the image and ``label_fn`` to each label map."""
    out = dict(sample)
    out["image"] = np.ascontiguousarray(image_fn(sample["image"]))
    for key in _label_keys(sample):
        out[key] = np.ascontiguousarray(_move_map(label_fn, sample[key]))
    return out


def _with_image(sample: Sample, image: np.ndarray) -> Sample:
    out = dict(sample)
    out["image"] = image
    return out


def check_sample(sample: Mapping[str, Any]) -> None:
    """Raise :class:`UserError` unless ``sample`` has an (H, W, 3) uint8 image and matching maps."""
    image = sample.get("image") if isinstance(sample, Mapping) else None
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise UserError(f"augment: sample 'image' is {got}; expected an (H, W, 3) uint8 array")
    for key in LABEL_MAPS:
        value = sample.get(key)
        if value is not None and (not isinstance(value, np.ndarray) or value.shape != image.shape[:2]):
            got = value.shape if isinstance(value, np.ndarray) else type(value).__name__
            raise UserError(f"augment: sample '{key}' is {got}; expected an (H, W) array with the image's {image.shape[:2]}")


# ----------------------------------------------------------------------------------------- geometric ops


def make_flip(axis: str) -> OpFn:
    """Mirror left-right (``horizontal``) or top-bottom (``vertical``)."""
    dim = {"horizontal": 1, "vertical": 0}[_choice("flip", "axis", axis, ("horizontal", "vertical"))]
    return lambda sample, rng: _geometric(sample, lambda a: np.flip(a, dim), lambda a: np.flip(a, dim))


def make_rotate90(k: Sequence[int]) -> OpFn:
    """Rotate by ``90 * k`` degrees anticlockwise, ``k`` drawn uniformly from the list ``k``."""
    choices = [int(v) for v in k] if isinstance(k, (list, tuple)) and k else None
    if choices is None or any(v not in (0, 1, 2, 3) for v in choices):
        raise UserError(f"augment op 'rotate90': 'k' is {k!r}; expected a non-empty list of 0, 1, 2, 3")

    def rotate90(sample: Sample, rng: np.random.Generator) -> Sample:
        turns = choices[int(rng.integers(len(choices)))]
        return _geometric(sample, lambda a: np.rot90(a, turns), lambda a: np.rot90(a, turns))

    return rotate90


def make_transpose() -> OpFn:
    """Swap rows and columns (reflection about the main diagonal)."""
    return lambda sample, rng: _geometric(sample, lambda a: np.swapaxes(a, 0, 1), lambda a: np.swapaxes(a, 0, 1))


def _warp(sample: Sample, matrix: np.ndarray, interpolation: int, border: int) -> Sample:
    """Apply a 2x3 forward affine ``matrix`` (x = column, y = row) keeping the (H, W) shape."""
    height, width = sample["image"].shape[:2]

    def warp(array: np.ndarray, flags: int, mode: int) -> np.ndarray:
        return cv2.warpAffine(array, matrix, (width, height), flags=flags, borderMode=mode, borderValue=0)

    return _geometric(sample, lambda a: warp(a, interpolation, border),
                      lambda a: warp(a, cv2.INTER_NEAREST, cv2.BORDER_CONSTANT))


def affine_matrix(shape: tuple[int, int], scale: tuple[float, float], translate: tuple[float, float],
                  shear: float, rotate: float, linear: np.ndarray | None = None) -> np.ndarray:
    """2x3 forward affine about the image centre.

    Args:
        shape: (H, W) in pixels.
        scale: (sx, sy) factors along x (columns) and y (rows).
        translate: (tx, ty) as fractions of W and H.
        shear: x-shear angle in degrees.
        rotate: rotation in degrees; positive turns the content anticlockwise on screen.
        linear: optional extra 2x2 linear part applied last (before translation).
    """
    height, width = shape
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    theta = math.radians(rotate)
    rotation = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    shearing = np.array([[1.0, math.tan(math.radians(shear))], [0.0, 1.0]])
    part = rotation @ shearing @ np.diag(scale)
    if linear is not None:
        part = linear @ part
    centre = np.array([cx, cy])
    offset = centre + np.array([translate[0] * width, translate[1] * height]) - part @ centre
    return np.hstack([part, offset[:, None]])


def make_affine(scale: Any, translate: Any, shear: Any, rotate: Any, jitter: float = 0.0,
                interpolation: str = "linear", border: str = "constant") -> OpFn:
    """Random affine about the centre, output the same size (imgaug ``Affine`` semantics).

    ``scale``: per-axis factor range (x and y drawn independently); ``translate``: per-axis
    range as a fraction of the size; ``shear``, ``rotate``: degree ranges; ``jitter``: each
    entry of the 2x2 linear part is perturbed by U(-jitter, jitter) (FullNet ``RandomAffine``);
    ``interpolation`` (image only; maps are always nearest): nearest | linear | cubic;
    ``border``: constant (0) | reflect for the image, maps are always 0 outside.
    """
    scale = _range("affine", "scale", scale, 1e-3)
    translate = _range("affine", "translate", translate, -1, 1)
    shear = _range("affine", "shear", shear, -89, 89)
    rotate = _range("affine", "rotate", rotate, -360, 360)
    _range("affine", "jitter", jitter, 0, 1)
    flags = _INTERPOLATION[_choice("affine", "interpolation", interpolation, tuple(_INTERPOLATION))]
    mode = _BORDER[_choice("affine", "border", border, tuple(_BORDER))]

    def affine(sample: Sample, rng: np.random.Generator) -> Sample:
        factors = (_uniform(rng, scale), _uniform(rng, scale))
        shift = (_uniform(rng, translate), _uniform(rng, translate))
        angle_shear, angle = _uniform(rng, shear), _uniform(rng, rotate)
        linear = np.eye(2) + rng.uniform(-jitter, jitter, size=(2, 2)) if jitter else None
        matrix = affine_matrix(sample["image"].shape[:2], factors, shift, angle_shear, angle, linear)
        return _warp(sample, matrix, flags, mode)

    return affine


def _remap(sample: Sample, dx: np.ndarray, dy: np.ndarray, interpolation: int) -> Sample:
    """Sample each output pixel (x, y) from (x + dx, y + dy); 0 outside the image."""
    height, width = sample["image"].shape[:2]
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    map_x, map_y = grid_x + dx.astype(np.float32), grid_y + dy.astype(np.float32)

    def remap(array: np.ndarray, flags: int) -> np.ndarray:
        return cv2.remap(array, map_x, map_y, flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    return _geometric(sample, lambda a: remap(a, interpolation), lambda a: remap(a, cv2.INTER_NEAREST))


def make_elastic(points: int, sigma: float, interpolation: str = "linear") -> OpFn:
    """B-spline-style elastic deformation (FullNet ``RandomElasticDeform``).

    Displacements on a ``points x points`` control grid are drawn from N(0, sigma) pixels per
    axis and interpolated to every pixel with cubic splines (corners aligned).
    """
    if not isinstance(points, int) or points < 2:
        raise UserError(f"augment op 'elastic': 'points' is {points!r}; expected an integer >= 2")
    _range("elastic", "sigma", sigma, 0)
    flags = _INTERPOLATION[_choice("elastic", "interpolation", interpolation, tuple(_INTERPOLATION))]

    def elastic(sample: Sample, rng: np.random.Generator) -> Sample:
        height, width = sample["image"].shape[:2]
        control = rng.normal(0.0, sigma, size=(2, points, points))
        zoom = (height / points, width / points)
        dy, dx = (ndimage.zoom(c, zoom, order=3, mode="nearest", grid_mode=False)[:height, :width] for c in control)
        return _remap(sample, dx, dy, flags)

    return elastic


def make_elastic_gaussian(alpha: float, sigma: float, interpolation: str = "linear") -> OpFn:
    """Simard-style elastic deformation: uniform(-1, 1) fields smoothed by a Gaussian of
    ``sigma`` pixels, scaled by ``alpha`` pixels (albumentations ``ElasticTransform``)."""
    _range("elastic_gaussian", "alpha", alpha, 0)
    _range("elastic_gaussian", "sigma", sigma, 1e-3)
    flags = _INTERPOLATION[_choice("elastic_gaussian", "interpolation", interpolation, tuple(_INTERPOLATION))]

    def elastic_gaussian(sample: Sample, rng: np.random.Generator) -> Sample:
        shape = sample["image"].shape[:2]
        dx, dy = (alpha * cv2.GaussianBlur(rng.uniform(-1, 1, size=shape).astype(np.float32), (0, 0), sigma)
                  for _ in range(2))
        return _remap(sample, dx, dy, flags)

    return elastic_gaussian


def _pad_to(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Zero-pad (H, W, ...) evenly on both sides up to at least (height, width)."""
    pad_h, pad_w = max(height - array.shape[0], 0), max(width - array.shape[1], 0)
    if not pad_h and not pad_w:
        return array
    pads = [(pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pads)


def make_crop(size: Any, position: str, input_shape: tuple[int, int] | None = None) -> OpFn:
    """Crop to ``size`` = [h, w] (or ``"input"``: the network input shape) at the ``centre``
    (offset ``(H - h) // 2``, as HoVer-Net's ``cropping_center``) or a ``random`` position;
    a smaller sample is first zero-padded evenly (image and maps)."""
    if size == "input":
        if input_shape is None:
            raise UserError("augment op 'crop': size 'input' needs the network input shape (build_augment(..., input_shape=))")
        size = input_shape
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise UserError(f"augment op 'crop': 'size' is {size!r}; expected [height, width] in pixels or 'input'")
    height, width = int(size[0]), int(size[1])
    _choice("crop", "position", position, ("centre", "random"))

    def crop(sample: Sample, rng: np.random.Generator) -> Sample:
        padded = _geometric(sample, lambda a: _pad_to(a, height, width), lambda a: _pad_to(a, height, width))
        full_h, full_w = padded["image"].shape[:2]
        if position == "centre":
            top, left = (full_h - height) // 2, (full_w - width) // 2
        else:
            top, left = int(rng.integers(full_h - height + 1)), int(rng.integers(full_w - width + 1))
        window = (slice(top, top + height), slice(left, left + width))
        return _geometric(padded, lambda a: a[window], lambda a: a[window])

    return crop


def make_resize(scale: Any, interpolation: str = "linear", shorter_side: int | None = None) -> OpFn:
    """Resize by one factor drawn from ``scale`` (both axes); the sample changes size.

    With ``shorter_side`` (pixels) the factor first brings the shorter side to that length,
    then ``scale`` multiplies it (FullNet on GlaS: ``shorter_side: 238``, ``scale: 1``).
    """
    scale = _range("resize", "scale", scale, 1e-3)
    flags = _INTERPOLATION[_choice("resize", "interpolation", interpolation, tuple(_INTERPOLATION))]
    if shorter_side is not None and not (isinstance(shorter_side, int) and shorter_side > 0):
        raise UserError(f"augment op 'resize': 'shorter_side' is {shorter_side!r}; expected a positive integer or null")

    def resize(sample: Sample, rng: np.random.Generator) -> Sample:
        height, width = sample["image"].shape[:2]
        factor = _uniform(rng, scale) * (shorter_side / min(height, width) if shorter_side else 1.0)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        return _geometric(sample, lambda a: cv2.resize(a, size, interpolation=flags),
                          lambda a: cv2.resize(a, size, interpolation=cv2.INTER_NEAREST_EXACT))

    return resize


# ----------------------------------------------------------------------------------------- image-only ops


def make_gaussian_blur(ksize: Any) -> OpFn:
    """Gaussian blur with odd kernel sizes drawn per axis from ``ksize`` (sigma from the
    size, replicated border; HoVer-Net ``gaussian_blur``)."""
    sizes = _odd_sizes("gaussian_blur", "ksize", ksize)

    def gaussian_blur(sample: Sample, rng: np.random.Generator) -> Sample:
        kx, ky = (int(v) for v in rng.choice(sizes, size=2))
        return _with_image(sample, cv2.GaussianBlur(sample["image"], (kx, ky), 0, borderType=cv2.BORDER_REPLICATE))

    return gaussian_blur


def make_median_blur(ksize: Any) -> OpFn:
    """Median filter with an odd square kernel drawn from ``ksize``."""
    sizes = _odd_sizes("median_blur", "ksize", ksize)

    def median_blur(sample: Sample, rng: np.random.Generator) -> Sample:
        return _with_image(sample, cv2.medianBlur(sample["image"], int(rng.choice(sizes))))

    return median_blur


def make_motion_blur(ksize: Any) -> OpFn:
    """Average along a line of random direction through the centre of an odd ``k x k`` kernel."""
    sizes = _odd_sizes("motion_blur", "ksize", ksize)

    def motion_blur(sample: Sample, rng: np.random.Generator) -> Sample:
        k = int(rng.choice(sizes))
        angle = rng.uniform(0, math.pi)
        half = (k - 1) / 2
        dx, dy = half * math.cos(angle), half * math.sin(angle)
        kernel = np.zeros((k, k), np.float32)
        start, end = (round(half - dx), round(half - dy)), (round(half + dx), round(half + dy))
        cv2.line(kernel, start, end, 1.0, thickness=1)
        kernel /= kernel.sum()
        return _with_image(sample, cv2.filter2D(sample["image"], -1, kernel, borderType=cv2.BORDER_REPLICATE))

    return motion_blur


def make_gaussian_noise(sigma: Any, per_channel: float) -> OpFn:
    """Add N(0, s) noise, s drawn from ``sigma`` (grey levels); with probability
    ``per_channel`` each channel gets its own noise, else one noise plane is shared."""
    sigma = _range("gaussian_noise", "sigma", sigma, 0)
    _range("gaussian_noise", "per_channel", per_channel, 0, 1)

    def gaussian_noise(sample: Sample, rng: np.random.Generator) -> Sample:
        image = sample["image"]
        std = _uniform(rng, sigma)
        channels = 3 if rng.random() < per_channel else 1
        noise = rng.normal(0.0, std, size=image.shape[:2] + (channels,))
        return _with_image(sample, to_uint8(image + noise))

    return gaussian_noise


def make_hue(degrees: Any) -> OpFn:
    """Rotate hue by an angle drawn from ``degrees`` (HoVer-Net ``add_to_hue(-8, 8)`` in
    OpenCV 8-bit units is +-16 degrees)."""
    degrees = _range("hue", "degrees", degrees, -180, 180)

    def hue(sample: Sample, rng: np.random.Generator) -> Sample:
        hsv = cv2.cvtColor(sample["image"].astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = np.mod(hsv[..., 0] + _uniform(rng, degrees), 360.0)
        return _with_image(sample, to_uint8(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0))

    return hue


def make_saturation(factor: Any) -> OpFn:
    """Blend with the grey image: ``f * image + (1 - f) * grey`` with f drawn from ``factor``."""
    factor = _range("saturation", "factor", factor, 0)

    def saturation(sample: Sample, rng: np.random.Generator) -> Sample:
        image = sample["image"]
        f = _uniform(rng, factor)
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None].astype(np.float32)
        return _with_image(sample, to_uint8(image * f + grey * (1.0 - f)))

    return saturation


def make_brightness(shift: Any, factor: Any) -> OpFn:
    """``image * f + s`` with f from ``factor`` and s (grey levels) from ``shift``."""
    shift = _range("brightness", "shift", shift, -255, 255)
    factor = _range("brightness", "factor", factor, 0)

    def brightness(sample: Sample, rng: np.random.Generator) -> Sample:
        f, s = _uniform(rng, factor), _uniform(rng, shift)
        return _with_image(sample, to_uint8(sample["image"] * f + s))

    return brightness


def make_contrast(factor: Any) -> OpFn:
    """Scale each channel about its mean by f drawn from ``factor``."""
    factor = _range("contrast", "factor", factor, 0)

    def contrast(sample: Sample, rng: np.random.Generator) -> Sample:
        image = sample["image"]
        f = _uniform(rng, factor)
        mean = image.mean(axis=(0, 1), keepdims=True)
        return _with_image(sample, to_uint8(image * f + mean * (1.0 - f)))

    return contrast


def make_hed_jitter(alpha: Any, beta: Any) -> OpFn:
    """HED stain jitter (Tellez et al.): in the HED space of ``skimage.color.rgb2hed`` each
    channel c becomes ``hed_c * a_c + b_c``, a_c from ``alpha`` and b_c from ``beta``.

    The transform is rgb2hed's (``hed_from_rgb`` on log intensities) without its clipping of
    negative concentrations, so that a = 1, b = 0 gives back the image.
    """
    alpha = _range("hed_jitter", "alpha", alpha, 0)
    beta = _range("hed_jitter", "beta", beta)
    log_floor = np.log(1e-6)

    def hed_jitter(sample: Sample, rng: np.random.Generator) -> Sample:
        rgb = np.maximum(sample["image"] / 255.0, 1e-6)
        hed = (np.log(rgb) / log_floor) @ hed_from_rgb
        hed = hed * rng.uniform(alpha[0], alpha[1], size=3) + rng.uniform(beta[0], beta[1], size=3)
        return _with_image(sample, to_uint8(np.exp((hed * log_floor) @ rgb_from_hed) * 255.0))

    return hed_jitter


def _colour_target(op: str, target: Any, anchor: Any, keys: Sequence[str],
                   from_anchor: Callable[[np.ndarray], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Resolve a colour-normalisation target from an ``anchor`` image path or YAML values."""
    from misc.io import read_image

    if anchor is not None:
        return from_anchor(read_image(Path(os.path.expanduser(str(anchor)))))
    if not isinstance(target, Mapping) or set(target) != set(keys):
        raise UserError(f"augment op '{op}': give 'anchor' (an image path) or 'target' with keys {list(keys)}; got {target!r}")
    return {k: np.asarray(target[k], dtype=np.float64) for k in keys}


def make_reinhard(target: Any = None, anchor: Any = None) -> OpFn:
    """Reinhard colour normalisation: match per-channel CIELAB mean/std to ``target``
    (``{mean: [L, a, b], std: [L, a, b]}``) or to the statistics of the ``anchor`` image."""
    goal = _colour_target("reinhard", target, anchor, ("mean", "std"),
                          lambda img: dict(zip(("mean", "std"), lab_statistics(img))))
    if goal["mean"].shape != (3,) or goal["std"].shape != (3,):
        raise UserError(f"augment op 'reinhard': target mean/std must have 3 values each; got {target!r}")

    def reinhard(sample: Sample, rng: np.random.Generator) -> Sample:
        return _with_image(sample, reinhard_normalise(sample["image"], goal))

    return reinhard


def make_macenko(target: Any = None, anchor: Any = None, io: float = 240.0, alpha: float = 1.0,
                 beta: float = 0.15) -> OpFn:
    """Macenko stain normalisation to ``target`` (``{stain_matrix: 3x2 OD columns H, E;
    max_conc: [H, E]}``) or to the stains of the ``anchor`` image. ``io``: background
    intensity; ``alpha``: angle percentile; ``beta``: OD threshold for tissue. Images with
    almost no tissue (< 100 pixels above ``beta``) are returned unchanged."""
    def from_anchor(img: np.ndarray) -> dict[str, np.ndarray]:
        estimate = macenko_stains(img, io, alpha, beta)
        if estimate is None:
            raise UserError(f"augment op 'macenko': anchor {anchor} has too little stained tissue to estimate stains")
        return {"stain_matrix": estimate[0], "max_conc": estimate[1]}

    goal = _colour_target("macenko", target, anchor, ("stain_matrix", "max_conc"), from_anchor)
    if goal["stain_matrix"].shape != (3, 2) or goal["max_conc"].shape != (2,):
        raise UserError(f"augment op 'macenko': stain_matrix must be 3x2 and max_conc 2 values; got {target!r}")

    def macenko(sample: Sample, rng: np.random.Generator) -> Sample:
        image = sample["image"]
        estimate = macenko_stains(image, io, alpha, beta)
        if estimate is None:
            return _with_image(sample, image.copy())
        stains, max_conc = estimate
        od = -np.log((image.reshape(-1, 3).astype(np.float64) + 1.0) / io)
        conc = np.linalg.pinv(stains) @ od.T
        conc *= (goal["max_conc"] / np.maximum(max_conc, 1e-6))[:, None]
        rgb = io * np.exp(-goal["stain_matrix"] @ conc)
        return _with_image(sample, to_uint8(rgb.T.reshape(image.shape)))

    return macenko


# ----------------------------------------------------------------------------------------- composition


class _Step:
    """One pipeline entry: an op function that runs with probability ``p``."""

    def __init__(self, name: str, fn: OpFn, p: float) -> None:
        self.name, self.fn, self.p = name, fn, p

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if self.p >= 1.0 or rng.random() < self.p:
            return self.fn(sample, rng)
        return sample

    def __repr__(self) -> str:
        return f"{self.name}(p={self.p})"


def _one_of(steps: list[_Step]) -> OpFn:
    return lambda sample, rng: steps[int(rng.integers(len(steps)))](sample, rng)


def _random_order(steps: list[_Step]) -> OpFn:
    def random_order(sample: Sample, rng: np.random.Generator) -> Sample:
        for index in rng.permutation(len(steps)):
            sample = steps[index](sample, rng)
        return sample

    return random_order


OPS: dict[str, Callable[..., OpFn]] = {
    "flip": make_flip,
    "rotate90": make_rotate90,
    "transpose": make_transpose,
    "affine": make_affine,
    "elastic": make_elastic,
    "elastic_gaussian": make_elastic_gaussian,
    "crop": make_crop,
    "resize": make_resize,
    "gaussian_blur": make_gaussian_blur,
    "median_blur": make_median_blur,
    "motion_blur": make_motion_blur,
    "gaussian_noise": make_gaussian_noise,
    "hue": make_hue,
    "saturation": make_saturation,
    "brightness": make_brightness,
    "contrast": make_contrast,
    "hed_jitter": make_hed_jitter,
    "reinhard": make_reinhard,
    "macenko": make_macenko,
}
COMPOSITES = {"one_of": _one_of, "random_order": _random_order}


class Augment:
    """A built pipeline: ``Augment(sample, rng) -> new sample``; never modifies ``sample``."""

    def __init__(self, steps: list[_Step]) -> None:
        self.steps = steps

    def __call__(self, sample: Mapping[str, Any], rng: np.random.Generator) -> Sample:
        check_sample(sample)
        out = dict(sample)
        for step in self.steps:
            out = step(out, rng)
        for key, value in out.items():
            original = sample.get(key)
            if isinstance(value, np.ndarray) and isinstance(original, np.ndarray) and np.shares_memory(value, original):
                out[key] = value.copy()
        return out

    def __repr__(self) -> str:
        return f"Augment({self.steps})"


# ----------------------------------------------------------------------------------------- YAML


@functools.lru_cache(maxsize=8)
def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path) as handle:
            content = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot be read as augmentation YAML ({err})") from None
    if not isinstance(content, dict) or not isinstance(content.get("ops"), dict) or not isinstance(content.get("presets"), dict):
        raise UserError(f"{path}: expected top-level mappings 'ops' (op defaults) and 'presets' (named pipelines)")
    return content


def augment_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The parsed augmentation YAML (``ops`` defaults and ``presets``); default ``opt/augment.yaml``."""
    return _read_yaml(str(Path(path) if path is not None else AUGMENT_YAML))


def load_augment_preset(name: str, path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The pipeline spec of a named set in ``opt/augment.yaml`` (``hovernet``, ``fullnet``,
    ``unet``, ``none``, ...), as a list of op dicts for :func:`build_augment`."""
    presets = augment_config(path)["presets"]
    if name not in presets:
        raise UserError(f"augmentation preset '{name}' is not in {path or AUGMENT_YAML}; choose one of {sorted(presets)}")
    return list(presets[name] or [])


def build_augment(spec: Sequence[Mapping[str, Any]] | Mapping[str, Any] | str,
                  input_shape: Sequence[int] | None = None,
                  defaults: Mapping[str, Mapping[str, Any]] | None = None) -> Augment:
    """Build a pipeline from a spec.

    Args:
        spec: a list of op dicts, one op dict, ``{'preset': name}`` or a preset name.
        input_shape: network input (H, W), used by ``crop`` entries with ``size: input``.
        defaults: per-op default parameters; the ``ops`` section of ``opt/augment.yaml`` if None.

    Raises:
        UserError: unknown op or parameter, or an invalid value (names the op and key).
    """
    if isinstance(spec, str):
        spec = load_augment_preset(spec)
    elif isinstance(spec, Mapping):
        spec = load_augment_preset(spec["preset"]) if set(spec) == {"preset"} else [spec]
    if defaults is None:
        defaults = augment_config()["ops"]
    shape = tuple(int(v) for v in input_shape) if input_shape is not None else None
    return Augment([_build_step(entry, shape, defaults) for entry in spec])


def _build_step(entry: Any, input_shape: tuple[int, int] | None, defaults: Mapping[str, Mapping[str, Any]]) -> _Step:
    if not isinstance(entry, Mapping) or "op" not in entry:
        raise UserError(f"augment entry {entry!r}: expected a mapping with an 'op' key")
    name = entry["op"]
    p = entry.get("p", 1.0)
    _range(str(name), "p", p, 0, 1)
    params = {k: v for k, v in entry.items() if k not in ("op", "p")}
    if name in COMPOSITES:
        children = params.pop("ops", None)
        if params or not isinstance(children, list) or not children:
            raise UserError(f"augment op '{name}': expects only 'ops' (a non-empty list) and 'p'; got {dict(entry)!r}")
        return _Step(name, COMPOSITES[name]([_build_step(c, input_shape, defaults) for c in children]), float(p))
    if name not in OPS:
        raise UserError(f"augment op '{name}' is unknown; choose one of {sorted(OPS) + sorted(COMPOSITES)}")
    factory = OPS[name]
    accepted = set(inspect.signature(factory).parameters) - {"input_shape"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise UserError(f"augment op '{name}': unknown parameter(s) {unknown}; it takes {sorted(accepted)}")
    merged = {**dict(defaults.get(name) or {}), **params}
    missing = [k for k, v in inspect.signature(factory).parameters.items()
               if v.default is inspect.Parameter.empty and k not in merged]
    if missing:
        raise UserError(f"augment op '{name}': missing parameter(s) {missing} (not in the entry nor in the op defaults)")
    if "input_shape" in inspect.signature(factory).parameters:
        merged["input_shape"] = input_shape
    return _Step(name, factory(**merged), float(p))
