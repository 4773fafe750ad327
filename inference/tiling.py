"""Tiled prediction shared by all families: window grid, padding, batching and stitching.

Semantics follow HoVer-Net's tile mode (SEEDS §2.7), generalised:

- the network takes an ``input_size`` window and returns the centred ``output_size`` window
  (``output_size <= input_size``; the context margin ``m = (input - output) / 2``);
- windows advance by ``step`` (default ``output_size - 2 * keep_margin``);
- where two output windows overlap, the cut between them is the middle of the overlap, so
  each window keeps its centre and drops about ``keep_margin`` pixels on interior sides
  (FullNet's overlapping windows); windows at the image border keep everything up to it;
- ``pad_mode='reflect'`` reflect-pads the image by ``m`` plus the kept margin at the top/left
  and as much as the windows need at the bottom/right (HoVer-Net); ``pad_mode='zero'`` pads
  ``m`` zeros at the top/left and zeros at the bottom/right (FullNet: ``m = 0``);
- ``resize_shorter=S`` replaces the windows by one whole-image pass: the image is resized
  (bilinear) so that its shorter side is ``S``, predicted in one call, and every map is resized
  back (bilinear) to the image size (FullNet on GlaS). It holds the whole image in memory;
- ``scale=s`` (not 1) runs the windows on the image resized by ``s`` (bilinear, new side
  ``round(side * s)``) and resizes every map back to the image size (bilinear, pixel-centre
  aligned), band by band: a network trained at 20x predicts 40x images with ``s = 0.5``.
  It holds the resized image's maps (``s^2`` of the full maps) in memory.

Padding is never materialised: each window is gathered through per-axis index arrays. Output
rows are emitted band by band (one band per row of windows) to a *sink*, so the memory held is
one band of ``step`` rows plus one batch, whatever the image size.

A predictor may also return per-window vectors, (N, C) instead of (N, C, h, w) maps: a
classifier slid over the image. Those become a *grid map* with one value per window, (R, K, C)
for R rows and K columns of windows, kept whole (it is ``step^2`` times smaller than the image)
and handed to the sink at the end through ``sink.grid(name, values, geometry)``. Its
:class:`GridGeometry` says where cell (i, j) lies in the image: rows
``[offset + i * step, offset + i * step + size)`` in image pixels (the same along columns), so
maps and images line up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Protocol

import cv2
import numpy as np

from misc.errors import UserError

PAD_MODES = ("reflect", "zero")

Predictor = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class TileSpec:
    """Window geometry of tiled prediction.

    Attributes:
        input_size: side of the square window fed to the network, in pixels.
        output_size: side of the centred square window the network returns.
        keep_margin: pixels dropped on interior sides of each output window.
        step: window stride; ``None`` means ``output_size - 2 * keep_margin``.
        pad_mode: ``'reflect'`` or ``'zero'`` (see the module docstring).
        resize_shorter: None for windows, or the shorter side (pixels) of one whole-image pass.
        scale: factor the image is resized by before the windows run (maps are resized back).
    """

    input_size: int
    output_size: int
    keep_margin: int = 0
    step: int | None = None
    pad_mode: str = "reflect"
    resize_shorter: int | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.input_size, int) and isinstance(self.output_size, int)):
            raise UserError(
                f"tiling: input_size/output_size must be integers, got {self.input_size!r}/{self.output_size!r}"
            )
        if not 0 < self.output_size <= self.input_size:
            raise UserError(
                f"tiling: need 0 < output_size <= input_size, got output {self.output_size}, input {self.input_size}"
            )
        if (self.input_size - self.output_size) % 2:
            raise UserError(
                f"tiling: input_size - output_size must be even (centred output), got {self.input_size} - {self.output_size}"
            )
        if not 0 <= 2 * self.keep_margin < self.output_size:
            raise UserError(
                f"tiling: keep_margin must be in [0, output_size / 2), got {self.keep_margin} for output {self.output_size}"
            )
        widest = self.output_size - 2 * self.keep_margin
        if self.step is not None and not 0 < self.step <= widest:
            raise UserError(
                f"tiling: step must be in [1, output_size - 2 * keep_margin = {widest}], got {self.step}"
            )
        if self.pad_mode not in PAD_MODES:
            raise UserError(f"tiling: pad_mode must be one of {list(PAD_MODES)}, got {self.pad_mode!r}")
        if self.resize_shorter is not None and not (isinstance(self.resize_shorter, int) and self.resize_shorter > 0):
            raise UserError(f"tiling: resize_shorter must be a positive integer or null, got {self.resize_shorter!r}")
        if not (isinstance(self.scale, (int, float)) and self.scale > 0):
            raise UserError(f"tiling: scale must be a positive number, got {self.scale!r}")
        if self.scale != 1.0 and self.resize_shorter is not None:
            raise UserError("tiling: set either scale or resize_shorter, not both")

    @property
    def stride(self) -> int:
        """The resolved step between windows, in pixels."""
        return self.step if self.step is not None else self.output_size - 2 * self.keep_margin

    @property
    def context(self) -> int:
        """Context margin ``(input_size - output_size) / 2`` on each side, in pixels."""
        return (self.input_size - self.output_size) // 2

    @classmethod
    def from_config(cls, infer_cfg: dict) -> "TileSpec":
        """Build from a config's ``infer`` section.

        Reads ``input_size`` and ``output_size`` and, when the family defines them,
        ``keep_margin`` (default 0), ``step`` (default derived), ``pad_mode`` (default reflect)
        and ``resize_shorter`` (default None: windows). With ``net_mag`` set (the magnification
        the network was trained at), images of magnification ``mag`` are resized by
        ``net_mag / mag``.
        """
        net_mag = infer_cfg.get("net_mag")
        scale = 1.0 if net_mag is None else float(net_mag) / float(infer_cfg.get("mag") or net_mag)
        try:
            return cls(
                input_size=infer_cfg["input_size"],
                output_size=infer_cfg["output_size"],
                keep_margin=infer_cfg.get("keep_margin") or 0,
                step=infer_cfg.get("step"),
                pad_mode=infer_cfg.get("pad_mode") or "reflect",
                resize_shorter=infer_cfg.get("resize_shorter"),
                scale=scale,
            )
        except KeyError as err:
            raise UserError(f"config: infer.{err.args[0]} is missing; it sets the tiling window") from None


@dataclass(frozen=True)
class AxisPlan:
    """Window placement along one image axis.

    Attributes:
        length: image length along the axis, in pixels.
        source: (P,) int64 image index of each padded coordinate; -1 marks zero padding.
        input_starts: (n,) start of each input window in padded coordinates.
        output_starts: (n,) start of each output window in image coordinates (may be < 0).
        keep: (n, 2) kept ``[start, stop)`` of each window in image coordinates, clipped to
            ``[0, length)``; consecutive ranges abut and together cover the axis exactly.
    """

    length: int
    source: np.ndarray
    input_starts: np.ndarray
    output_starts: np.ndarray
    keep: np.ndarray


def plan_axis(length: int, spec: TileSpec) -> AxisPlan:
    """Place windows along an axis of ``length`` pixels (``length >= 1``)."""
    out, stride, context = spec.output_size, spec.stride, spec.context
    half_overlap = (out - stride) // 2
    pad_before = context + half_overlap if spec.pad_mode == "reflect" else context
    shift = pad_before - context  # output window i covers [i * stride - shift, ... + out)
    count = max(1, math.ceil((length + shift - out) / stride) + 1)
    input_starts = np.arange(count, dtype=np.int64) * stride
    output_starts = input_starts - shift
    cuts = np.concatenate([[output_starts[0]], output_starts[1:] + half_overlap, [output_starts[-1] + out]])
    keep = np.clip(np.stack([cuts[:-1], cuts[1:]], axis=1), 0, length)
    pad_after = int(input_starts[-1]) + spec.input_size - pad_before - length
    indices = np.arange(length, dtype=np.int64)
    if spec.pad_mode == "reflect":
        source = np.pad(indices, (pad_before, pad_after), mode="reflect")
    else:
        source = np.pad(indices, (pad_before, pad_after), mode="constant", constant_values=-1)
    return AxisPlan(length, source, input_starts, output_starts, keep)


def gather_window(image: np.ndarray, rows: AxisPlan, cols: AxisPlan, row: int, col: int, size: int) -> np.ndarray:
    """Input window (size, size, C) of ``image`` at grid cell (row, col), padding applied."""
    row_src = rows.source[rows.input_starts[row] : rows.input_starts[row] + size]
    col_src = cols.source[cols.input_starts[col] : cols.input_starts[col] + size]
    window = image[np.ix_(np.maximum(row_src, 0), np.maximum(col_src, 0))]
    if row_src.min() < 0 or col_src.min() < 0:
        window[(row_src < 0)[:, None] | (col_src < 0)[None, :]] = 0
    return window


@dataclass(frozen=True)
class GridGeometry:
    """Where the cells of a grid map lie in the image, in image pixels (level 0 of the image
    the tiler was given): cell ``i`` along an axis covers ``[offset + i * step, offset + i *
    step + size)``; the same along rows and columns.

    Attributes:
        step: pixels between the starts of neighbouring cells (the window stride).
        size: pixels one cell's window covers (the output window).
        offset: image coordinate of cell 0's start (negative when windows start in the padding).
    """

    step: float
    size: float
    offset: float

    def as_dict(self) -> dict[str, float]:
        """JSON-ready ``{'step', 'size', 'offset'}``."""
        return {"step": float(self.step), "size": float(self.size), "offset": float(self.offset)}

    def scaled(self, factor: float) -> "GridGeometry":
        """The geometry in the coordinates of an image ``factor`` times larger."""
        return GridGeometry(self.step * factor, self.size * factor, self.offset * factor)


class BandSink(Protocol):
    """Receiver of stitched output rows, called in increasing, contiguous row order.

    Sinks also take grid maps (per-window vectors) through ``grid(name, values, geometry)``
    with ``values`` (R, K, C) float32 and a :class:`GridGeometry`; the tiler calls it once
    per grid map, after the last band."""

    def __call__(self, row_start: int, row_stop: int, band: dict[str, np.ndarray]) -> None:
        """Take rows ``[row_start, row_stop)``: named (row_stop - row_start, W, C) float32 maps."""


class ArraySink:
    """Collects the bands into in-memory (H, W, C) float32 arrays (``self.maps``) and grid maps
    into ``self.maps`` as (R, K, C) with their geometry in ``self.grids``."""

    def __init__(self, height: int) -> None:
        self.height = height
        self.maps: dict[str, np.ndarray] = {}
        self.grids: dict[str, GridGeometry] = {}

    def __call__(self, row_start: int, row_stop: int, band: dict[str, np.ndarray]) -> None:
        for name, values in band.items():
            if name not in self.maps:
                self.maps[name] = np.empty((self.height, *values.shape[1:]), np.float32)
            self.maps[name][row_start:row_stop] = values

    def grid(self, name: str, values: np.ndarray, geometry: GridGeometry) -> None:
        """Keep grid map ``name`` ((R, K, C) float32) and its geometry."""
        self.maps[name] = np.asarray(values, np.float32)
        self.grids[name] = geometry


def emit_grid(sink: BandSink, name: str, values: np.ndarray, geometry: GridGeometry) -> None:
    """Hand a grid map to ``sink.grid``; a sink without one refuses grid maps."""
    receive = getattr(sink, "grid", None)
    if receive is None:
        raise UserError(f"tiling: the family's predict returned per-window vectors '{name}' but the output "
                        f"({type(sink).__name__}) stores only dense maps")
    receive(name, values, geometry)


def _check_outputs(outputs: dict[str, np.ndarray], count: int, size: int) -> None:
    if not outputs:
        raise UserError("tiling: the family's predict returned no maps")
    for name, values in outputs.items():
        vector = values.ndim == 2 and values.shape[0] == count
        if not vector and (values.ndim != 4 or values.shape[0] != count or values.shape[1:3] != (size, size)):
            raise UserError(
                f"tiling: predicted map '{name}' has shape {values.shape}; expected ({count}, {size}, {size}, C) "
                f"for infer.output_size = {size}, or ({count}, C) per-window vectors"
            )


def resized_shape(shape: tuple[int, int], shorter: int) -> tuple[int, int]:
    """(H, W) scaled so that the shorter side is ``shorter`` px (the longer side rounded, >= 1)."""
    return scaled_shape(shape, shorter / min(shape))


def predict_resized(image: np.ndarray, predict: Predictor, shorter: int, sink: BandSink) -> None:
    """One whole-image pass at a fixed scale (see ``resize_shorter`` in the module docstring).

    Args:
        image: (H, W, C) array.
        predict: maps a (1, h, w, C) batch to named (1, h, w, K) float maps; (h, w) is
            :func:`resized_shape` of (H, W).
        shorter: the shorter side of the resized image, in pixels.
        sink: receives all H rows at once.
    """
    height, width = image.shape[:2]
    small_h, small_w = resized_shape((height, width), shorter)
    small = cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_LINEAR)
    outputs = predict(small.reshape(1, small_h, small_w, image.shape[2]))
    if not outputs:
        raise UserError("tiling: the family's predict returned no maps")
    maps = {}
    for name, values in outputs.items():
        if values.ndim == 2 and values.shape[0] == 1:
            emit_grid(sink, name, values.reshape(1, 1, -1), GridGeometry(max(height, width), max(height, width), 0.0))
            continue
        if values.ndim != 4 or values.shape[:3] != (1, small_h, small_w):
            raise UserError(f"tiling: predicted map '{name}' has shape {values.shape}; expected "
                            f"(1, {small_h}, {small_w}, C) for the image resized to a shorter side of {shorter}")
        maps[name] = resize_rows(values[0], (height, width), 0, height)
    if maps:
        sink(0, height, maps)


def predict_tiled(
    image: np.ndarray,
    predict: Predictor,
    spec: TileSpec,
    sink: BandSink,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Predict ``image`` window by window and emit the stitched output rows to ``sink``.

    Args:
        image: (H, W, C) array, typically uint8 RGB.
        predict: maps a (N, input, input, C) batch of windows to named
            (N, output, output, K) float maps.
        spec: the window geometry.
        sink: receives each finished band of rows (see :class:`BandSink`).
        batch_size: windows per ``predict`` call.
        on_batch: called with the number of windows after each batch (progress).
    """
    if image.ndim != 3 or min(image.shape[:2]) < 1:
        raise UserError(f"tiling: image shape {image.shape} is not (H, W, C) with H, W >= 1")
    if batch_size < 1:
        raise UserError(f"tiling: batch_size must be >= 1, got {batch_size}")
    if spec.resize_shorter is not None:
        predict_resized(image, predict, spec.resize_shorter, sink)
        if on_batch is not None:
            on_batch(1)
        return
    if spec.scale != 1.0:
        predict_scaled(image, predict, spec, sink, batch_size, on_batch)
        return
    rows, cols = plan_axis(image.shape[0], spec), plan_axis(image.shape[1], spec)
    n_rows, n_cols = len(rows.input_starts), len(cols.input_starts)
    cells = [(r, c) for r in range(n_rows) for c in range(n_cols)]
    bands: dict[int, dict[str, np.ndarray]] = {}
    grids: dict[str, np.ndarray] = {}
    remaining = {r: n_cols for r in range(n_rows)}
    for first in range(0, len(cells), batch_size):
        batch = cells[first : first + batch_size]
        windows = np.stack([gather_window(image, rows, cols, r, c, spec.input_size) for r, c in batch])
        outputs = predict(windows)
        _check_outputs(outputs, len(batch), spec.output_size)
        dense = {name: values for name, values in outputs.items() if values.ndim == 4}
        for name, values in outputs.items():
            if values.ndim == 2:
                grid = grids.setdefault(name, np.empty((n_rows, n_cols, values.shape[1]), np.float32))
                grid[tuple(np.array(batch).T)] = values
        for k, (r, c) in enumerate(batch):
            (r0, r1), (c0, c1) = rows.keep[r], cols.keep[c]
            dy, dx = r0 - rows.output_starts[r], c0 - cols.output_starts[c]
            band = bands.setdefault(
                r, {name: np.empty((r1 - r0, image.shape[1], v.shape[3]), np.float32) for name, v in dense.items()}
            )
            for name, values in dense.items():
                band[name][:, c0:c1] = values[k, dy : dy + r1 - r0, dx : dx + c1 - c0]
            remaining[r] -= 1
            if remaining[r] == 0:
                finished = bands.pop(r)
                if finished:
                    sink(int(r0), int(r1), finished)
        if on_batch is not None:
            on_batch(len(batch))
    geometry = GridGeometry(float(spec.stride), float(spec.output_size), float(rows.output_starts[0]))
    for name, values in grids.items():
        emit_grid(sink, name, values, geometry)


def scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """(H, W) resized by ``scale``: each side ``round(side * scale)``, at least 1."""
    return tuple(max(1, round(side * scale)) for side in shape)  # type: ignore[return-value]


def resize_rows(values: np.ndarray, shape: tuple[int, int], row_start: int, row_stop: int) -> np.ndarray:
    """Rows ``[row_start, row_stop)`` of the (h, w, C) map ``values`` resized to ``shape`` (H, W).

    Bilinear with pixel-centre alignment and edge replication, as ``cv2.resize`` with
    ``INTER_LINEAR`` on the whole map, so bands can be produced one at a time.

    Returns:
        (row_stop - row_start, W, C) float32.
    """
    small_h, small_w = values.shape[:2]
    height, width = shape
    top, bottom, row_weight = linear_taps(np.arange(row_start, row_stop), small_h / height, small_h)
    left, right, col_weight = linear_taps(np.arange(width), small_w / width, small_w)
    rows = values[top] * (1 - row_weight)[:, None, None] + values[bottom] * row_weight[:, None, None]
    out = rows[:, left] * (1 - col_weight)[None, :, None] + rows[:, right] * col_weight[None, :, None]
    return out.astype(np.float32, copy=False)


def linear_taps(index: np.ndarray, ratio: float, source_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps along one axis for output ``index`` (source = ``(index + 0.5) * ratio - 0.5``,
    clipped to the axis): the two source indices and the weight of the second."""
    source = np.clip((index + 0.5) * ratio - 0.5, 0, source_count - 1)
    first = np.floor(source).astype(np.int64)
    second = np.minimum(first + 1, source_count - 1)
    return first, second, (source - first).astype(np.float32)


def predict_scaled(
    image: np.ndarray,
    predict: Predictor,
    spec: TileSpec,
    sink: BandSink,
    batch_size: int,
    on_batch: Callable[[int], None] | None,
    band_rows: int = 256,
) -> None:
    """Windows on the image resized by ``spec.scale``; maps resized back in bands of ``band_rows``."""
    height, width = image.shape[:2]
    small_h, small_w = scaled_shape((height, width), spec.scale)
    small = cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_LINEAR).reshape(small_h, small_w, -1)
    collected = ArraySink(small_h)
    predict_tiled(small, predict, replace(spec, scale=1.0), collected, batch_size, on_batch)
    dense = {name: values for name, values in collected.maps.items() if name not in collected.grids}
    for row_start in range(0, height, band_rows) if dense else ():
        row_stop = min(height, row_start + band_rows)
        sink(row_start, row_stop, {name: resize_rows(values, (height, width), row_start, row_stop)
                                   for name, values in dense.items()})
    for name, geometry in collected.grids.items():
        emit_grid(sink, name, collected.maps[name], geometry.scaled(height / small_h))


def window_count(shape: tuple[int, int], spec: TileSpec) -> int:
    """Number of windows :func:`predict_tiled` runs for an image of ``shape`` (H, W)."""
    if spec.resize_shorter is not None:
        return 1
    shape = scaled_shape(shape, spec.scale)
    return len(plan_axis(shape[0], spec).input_starts) * len(plan_axis(shape[1], spec).input_starts)
