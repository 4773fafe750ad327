"""Whole-slide inference: slide in; nuclei, overlays and a summary out; bounded memory, resumable.

The pipeline of one slide, as a splitter, the network call and a merger (MONAI/TIAToolbox):

1. **Splitter.** The slide is read at the network's pixel size (``infer.net_mpp``, else
   10 / ``infer.net_mag`` or 10 / ``infer.mag`` µm: 40x = 0.25 µm/px) through
   :class:`loader.slide.SlideView`. A low-resolution tissue mask (:mod:`loader.tissue`, or
   ``--mask``) keeps the windows of the tiling grid (:mod:`inference.tiling`: the same windows,
   padding and seams as a whole image) whose kept output box touches tissue. The windows are
   cut into fixed batches; a reader thread reads the batches ahead of the network.
2. **Network.** The family's ``predict`` on each batch (main thread).
3. **Merger.** A writer thread puts each window's kept output box into a chunked HDF5 store
   (``.work/raw.h5``: one (H, W, C) float16 dataset per map, 256² chunks allocated only where
   windows wrote, i.e. where tissue is), then records the batch in a journal.
4. **Post-processing, tile by tile.** The slide is cut into ``tile`` x ``tile`` processing
   tiles. As soon as every batch a tile needs (its tile plus a ``margin`` on each side) is
   stored, the tile's maps are post-processed by the family in a worker thread, concurrently
   with the network; a nucleus is kept by the tile holding its centroid, so none is lost,
   cut or counted twice when the margin exceeds a nucleus. Each tile's nuclei (and its piece
   of the overlay) go to ``.work/tiles/<row>_<col>.npz``, written atomically.
5. **Outputs**, from the tile files in tile order, each written atomically into
   ``OUT/<stem>/``: ``<stem>.geojson`` (QuPath detections, level-0 pixel-corner coordinates,
   classification name and colour), ``<stem>.db`` (:mod:`postproc.nucleidb`), ``<stem>.json``
   (HoVer-Net's WSI JSON: ``{"mag", "nuc": {id: {bbox, centroid, contour, type, type_prob}}}``
   in level-0 pixels), ``<stem>.overlay.tif`` (pyramidal type/probability overlay at about
   ``overlay_mpp``), ``<stem>.thumbnail.png`` (the slide with the overlay), ``<stem>.tissue.png``
   (the mask) and, last, ``<stem>.summary.json``. Then ``.work`` is removed.

Semantic families (``task_for('infer') == 'semantic'``) take the same steps with another tile
post-processing and other outputs (:mod:`inference.slide_semantic`: the class map per tile,
reduced to about ``overlay_mpp``, written by :func:`postproc.slide_semantic.write_slide_classes`);
:data:`SLIDE_TASKS` holds the two.

Resuming: a run killed at any point (SIGKILL included) and started again skips the batches in
the journal and the tiles already written; a store that no longer opens is rebuilt (only the
batches unfinished tiles need are run again). Batches are always the same windows, so the
outputs equal those of an uninterrupted run. A slide whose summary exists is skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import queue
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from inference.folder import write_failure
from inference.predict import adapted_batchnorm, check_adapt_weight, family_predictor, inference_precision, \
    with_infer_overrides
from inference.slide_semantic import assemble_classes, class_pixels, process_semantic_tile
from inference.tiling import AxisPlan, TileSpec, plan_axis
from loader.slide import RegionError, Slide, SlideView, open_slide
from loader.tissue import load_mask, mask_mpp_for, tissue_mask
from misc.errors import UserError
from misc.io import atomic_write, write_image
from postproc.formats import PALETTE, UNTYPED_CLASS, TypeInfo, pixel_edge_ring, type_class
from postproc.nucleidb import NucleiWriter, polygon_wkb
from postproc.pyramid import write_pyramid_tiff
from postproc.semantic import generic_class_info
from postproc.slide_semantic import write_slide_classes

log = logging.getLogger(__name__)

STORE_CHUNK = 256
WORK = ".work"
#: Class 0 of a semantic slide's map where the class info does not name it (where no tile ran).
BACKGROUND_CLASS = ("background", (255, 255, 255))
OUTPUT_SUFFIXES = {
    "geojson": ".geojson", "db": ".db", "json": ".json", "overlay": ".overlay.tif",
    "thumbnail": ".thumbnail.png", "tissue": ".tissue.png", "summary": ".summary.json",
}


@dataclass
class SlideOptions:
    """Options of :func:`run_slide`.

    Attributes:
        slide_mpp: µm per level-0 pixel overriding (or standing in for) the slide's metadata.
        mask: a tissue-mask image covering the slide (non-zero = tissue), instead of detection.
        batch_size: windows per forward pass (None: ``infer.batch_size``).
        tile: processing-tile side at the network's resolution, in pixels.
        margin: context around each processing tile, in pixels (more than a nucleus' diameter).
        overlay_mpp: pixel size aimed at for the overlay TIFF (a power-of-two reduction of the
            network's resolution), in µm.
        readers: threads reading windows.
        postproc_workers: processing tiles post-processed at once.
        prefetch: batches read ahead of the network.
        type_info: ``{type: (name, (r, g, b))}`` names and colours of nucleus types.
        show_progress: a progress bar per slide (windows done, ETA).
        bn_adapt_windows: with ``infer.bn_adapt`` > 0, the tissue windows (spread evenly over
            the slide's) whose BatchNorm statistics the network adapts to before the pass.
    """

    slide_mpp: float | None = None
    mask: str | os.PathLike | None = None
    batch_size: int | None = None
    tile: int = 1024
    margin: int = 96
    overlay_mpp: float = 2.0
    readers: int = 2
    postproc_workers: int = 1
    prefetch: int = 2
    type_info: TypeInfo | None = None
    show_progress: bool = True
    bn_adapt_windows: int = 64

    def check(self) -> None:
        """Raise a :class:`UserError` for impossible values."""
        if self.tile < 64 or self.margin < 0 or self.margin >= self.tile:
            raise UserError(f"slide tiles: need tile >= 64 and 0 <= margin < tile, got {self.tile}, {self.margin}")
        for name in ("readers", "postproc_workers", "prefetch", "bn_adapt_windows"):
            if getattr(self, name) < 1:
                raise UserError(f"slide option {name} must be >= 1, got {getattr(self, name)}")
        if not self.overlay_mpp > 0:
            raise UserError(f"overlay_mpp must be > 0 µm, got {self.overlay_mpp}")


@dataclass
class SlideResult:
    """Outcome of one slide: its output folder, whether it was already done, its summary."""

    slide: Path
    output_dir: Path
    skipped: bool
    summary: dict = field(default_factory=dict)


def network_mpp(infer_cfg: dict) -> float:
    """µm per pixel the network works at: ``infer.net_mpp``, else 10 / ``net_mag`` (or ``mag``).

    10 / magnification is the usual scanner convention (40x = 0.25 µm/px, 20x = 0.5 µm/px).
    """
    if infer_cfg.get("net_mpp"):
        return float(infer_cfg["net_mpp"])
    magnification = infer_cfg.get("net_mag") or infer_cfg.get("mag") or 40
    return 10.0 / float(magnification)


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Grid:
    """Windows and processing tiles of one slide at the network's resolution.

    Attributes:
        shape: (H, W) of the slide at the network's resolution.
        rows, cols: the tiling plans of the two axes (:func:`inference.tiling.plan_axis`).
        windows: (n, 2) int64 (row, col) grid cells of the windows that run, row-major.
        keep: (n, 4) int64 kept output box ``(r0, r1, c0, c1)`` of each window.
        batch_size: windows per batch; batch b is ``windows[b * batch_size:(b + 1) * batch_size]``.
        tiles: (m, 2) int64 (row, col) of the processing tiles with tissue windows nearby.
        tile_batches: per tile, the sorted batch indices its extended box needs.
        tile: processing-tile side; margin: its context.
    """

    shape: tuple[int, int]
    rows: AxisPlan
    cols: AxisPlan
    windows: np.ndarray
    keep: np.ndarray
    batch_size: int
    tiles: np.ndarray
    tile_batches: list[np.ndarray]
    tile: int
    margin: int

    @property
    def batches(self) -> int:
        """Number of batches."""
        return math.ceil(len(self.windows) / self.batch_size)

    def core(self, row: int, col: int) -> tuple[int, int, int, int]:
        """Processing tile's own box ``(r0, r1, c0, c1)``."""
        height, width = self.shape
        return (row * self.tile, min(height, (row + 1) * self.tile),
                col * self.tile, min(width, (col + 1) * self.tile))

    def extended(self, row: int, col: int) -> tuple[int, int, int, int]:
        """The tile's box grown by ``margin`` on every side, clipped to the slide."""
        r0, r1, c0, c1 = self.core(row, col)
        height, width = self.shape
        return (max(0, r0 - self.margin), min(height, r1 + self.margin),
                max(0, c0 - self.margin), min(width, c1 + self.margin))


def tissue_windows(rows: AxisPlan, cols: AxisPlan, mask: np.ndarray, scale: float) -> np.ndarray:
    """Grid cells whose kept output box touches tissue.

    Args:
        rows, cols: the axis plans at the network's resolution.
        mask: (h, w) bool tissue mask.
        scale: mask pixels per network pixel.

    Returns:
        (n, 2) int64 (row, col) cells, row-major.
    """
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def span(keep: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        start = np.clip(np.floor(keep[:, 0] * scale).astype(np.int64), 0, size)
        stop = np.clip(np.ceil(keep[:, 1] * scale).astype(np.int64), 0, size)
        return start, np.maximum(stop, np.minimum(start + 1, size))

    r0, r1 = span(rows.keep, mask.shape[0])
    c0, c1 = span(cols.keep, mask.shape[1])
    total = (integral[r1[:, None], c1[None, :]] - integral[r0[:, None], c1[None, :]]
             - integral[r1[:, None], c0[None, :]] + integral[r0[:, None], c0[None, :]])
    return np.argwhere(total > 0).astype(np.int64)


def plan_grid(shape: tuple[int, int], spec: TileSpec, mask: np.ndarray, mask_scale: float, batch_size: int,
              tile: int, margin: int) -> Grid:
    """Windows over tissue, their batches, and the processing tiles with the batches each needs."""
    rows, cols = plan_axis(shape[0], spec), plan_axis(shape[1], spec)
    windows = tissue_windows(rows, cols, mask, mask_scale)
    keep = np.concatenate([rows.keep[windows[:, 0]], cols.keep[windows[:, 1]]], axis=1).reshape(-1, 4)
    index = np.full((len(rows.keep), len(cols.keep)), -1, np.int64)  # grid cell -> window number
    index[windows[:, 0], windows[:, 1]] = np.arange(len(windows))
    tiles, tile_batches = [], []
    for row in range(math.ceil(shape[0] / tile)):
        r0, r1 = max(0, row * tile - margin), min(shape[0], (row + 1) * tile + margin)
        # grid rows whose kept rows meet [r0, r1): keep ranges are sorted and abut
        ra, rb = np.searchsorted(rows.keep[:, 1], r0, side="right"), np.searchsorted(rows.keep[:, 0], r1)
        for col in range(math.ceil(shape[1] / tile)):
            c0, c1 = max(0, col * tile - margin), min(shape[1], (col + 1) * tile + margin)
            ca, cb = np.searchsorted(cols.keep[:, 1], c0, side="right"), np.searchsorted(cols.keep[:, 0], c1)
            found = index[ra:rb, ca:cb]
            found = found[found >= 0]
            if found.size:
                tiles.append((row, col))
                tile_batches.append(np.unique(found // batch_size))
    return Grid(shape, rows, cols, windows, keep, batch_size, np.array(tiles, np.int64).reshape(-1, 2),
                tile_batches, tile, margin)


# ----------------------------------------------------------------------------- reading


class WindowReader:
    """Reads the input windows of batches from a slide view (padding as in :mod:`inference.tiling`).

    Args:
        view: the slide at the network's resolution.
        grid: the plan.
        size: the network's input window side.
        colour: optional per-window colour transform ((N, S, S, 3) uint8 -> same).
    """

    def __init__(self, view: SlideView, grid: Grid, size: int, threads: int,
                 colour: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.view, self.grid, self.size, self.colour = view, grid, size, colour
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="slide-read")

    def window(self, row: int, col: int) -> tuple[np.ndarray, RegionError | None]:
        """(S, S, 3) uint8 input window of grid cell (row, col) and the read error, if any."""
        rows, cols, size = self.grid.rows, self.grid.cols, self.size
        row_src = rows.source[rows.input_starts[row] : rows.input_starts[row] + size]
        col_src = cols.source[cols.input_starts[col] : cols.input_starts[col] + size]
        valid_r, valid_c = row_src[row_src >= 0], col_src[col_src >= 0]
        if valid_r.size == 0 or valid_c.size == 0:
            return np.zeros((size, size, 3), np.uint8), None
        y0, x0 = int(valid_r.min()), int(valid_c.min())
        region, error = self.view.read(x0, y0, int(valid_c.max()) + 1 - x0, int(valid_r.max()) + 1 - y0)
        window = region[np.ix_(np.maximum(row_src, y0) - y0, np.maximum(col_src, x0) - x0)]
        if (row_src < 0).any() or (col_src < 0).any():
            window[(row_src < 0)[:, None] | (col_src < 0)[None, :]] = 0
        return window, error

    def batch(self, index: int) -> tuple[np.ndarray, list[RegionError]]:
        """(N, S, S, 3) uint8 windows of batch ``index`` and the errors met reading them."""
        return self.cells(self.grid.windows[index * self.grid.batch_size : (index + 1) * self.grid.batch_size])

    def cells(self, cells: np.ndarray) -> tuple[np.ndarray, list[RegionError]]:
        """(N, S, S, 3) uint8 windows of the (N, 2) grid ``cells`` and the errors met reading them."""
        results = list(self.pool.map(lambda cell: self.window(int(cell[0]), int(cell[1])), cells))
        windows = np.stack([window for window, _ in results])
        if self.colour is not None:
            windows = self.colour(windows)
        return windows, [error for _, error in results if error is not None]

    def close(self) -> None:
        """Stop the reading threads."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def reinhard_transform(source: tuple[np.ndarray, np.ndarray], target: dict) -> Callable[[np.ndarray], np.ndarray]:
    """Reinhard colour transfer with fixed statistics, applied window by window.

    A whole image is normalised with its own CIELAB statistics; a slide's windows must share
    one transform, so the source statistics are the slide's tissue (from its thumbnail).

    Args:
        source: CIELAB (mean, std) of the slide's tissue.
        target: ``{'mean', 'std'}`` of the family (:attr:`models.base.Family.reinhard_target`).
    """
    mean, std = (np.asarray(v, np.float32) for v in source)
    goal_mean, goal_std = (np.asarray(target[key], np.float32) for key in ("mean", "std"))

    def apply(windows: np.ndarray) -> np.ndarray:
        flat = windows.reshape(-1, windows.shape[2], 3)
        lab = cv2.cvtColor(flat.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
        lab = (lab - mean) / np.maximum(std, 1e-6) * goal_std + goal_mean
        rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB) * 255.0
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(windows.shape)

    return apply


# ----------------------------------------------------------------------------- post-processing of a tile


def overlay_colours(type_info: TypeInfo | None, count: int) -> np.ndarray:
    """(count, 3) float32 RGB per type id 0..count-1 (0: the untyped nucleus colour)."""
    colours = [UNTYPED_CLASS[1]] + [type_class(t, type_info)[1] for t in range(1, max(count, 1))]
    return np.asarray(colours, np.float32)


def tile_overlay(prob: np.ndarray, types: np.ndarray, colours: np.ndarray, factor: int) -> np.ndarray:
    """Reduced-resolution type/probability overlay of a tile.

    Args:
        prob: (h, w) float32 nuclear probability.
        types: (h, w) int type per pixel (0 = untyped/background).
        colours: (T, 3) float32 colour per type.
        factor: reduction (power of two).

    Returns:
        (ceil(h / factor), ceil(w / factor), 3) uint8: white blended towards each pixel's type
        colour by its probability, area-averaged.
    """
    rgb = 255.0 * (1.0 - prob[..., None]) + colours[np.clip(types, 0, len(colours) - 1)] * prob[..., None]
    height, width = prob.shape
    pad = ((0, -height % factor), (0, -width % factor), (0, 0))
    rgb = np.pad(rgb.astype(np.float32), pad, mode="edge")
    small = rgb.reshape(rgb.shape[0] // factor, factor, rgb.shape[1] // factor, factor, 3).mean(axis=(1, 3))
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def process_tile(family: Any, raw: dict[str, np.ndarray], extended: tuple[int, int, int, int],
                 core: tuple[int, int, int, int], mag: float, colours: np.ndarray, factor: int) -> dict[str, np.ndarray]:
    """Post-process one tile's maps and keep the nuclei whose centroid lies in its core.

    Args:
        family: the instance family (its ``postprocess``).
        raw: named (h, w, C) float32 maps of the extended box.
        extended, core: ``(r0, r1, c0, c1)`` boxes at the network's resolution.
        mag: the magnification post-processing constants scale to.
        colours, factor: see :func:`tile_overlay`.

    Returns:
        Arrays (N nuclei, coordinates in network pixels, slide-wide): ``centroid`` (N, 2) float64
        (x, y) pixel centres; ``bbox`` (N, 4) int64 (rmin, cmin, rmax, cmax), max exclusive;
        ``type`` (N,) int64 (-1: untyped); ``type_prob`` (N,) float64 (nan: untyped);
        ``area`` (N,) int64 pixels; ``contour`` (K, 2) int32 and ``ring`` (R, 2) float32
        (pixel-edge outline, pixel-corner coordinates) concatenated, with ``contour_offset``
        and ``ring_offset`` (N + 1,); ``overlay`` the core's :func:`tile_overlay`.
    """
    result = family.postprocess(raw, mag=mag)
    inst_map, info = result["inst_map"], result["inst_info"]
    top, left = extended[0], extended[2]
    areas = np.bincount(np.asarray(inst_map).ravel())
    kept = []
    for inst_id, entry in sorted(info.items()):
        x, y = float(entry["centroid"][0]) + left, float(entry["centroid"][1]) + top
        if core[0] <= math.floor(y + 0.5) < core[1] and core[2] <= math.floor(x + 0.5) < core[3]:
            kept.append((int(inst_id), entry, x, y))
    kept.sort(key=lambda item: (item[3], item[2]))
    contours = [np.asarray(e["contour"], np.int64).reshape(-1, 2) + (left, top) for _, e, _, _ in kept]
    rings = [pixel_edge_ring(c) for c in contours]
    type_map = result.get("type_map")
    local = (slice(core[0] - top, core[1] - top), slice(core[2] - left, core[3] - left))
    prob = raw["np_prob"][..., 0][local] if "np_prob" in raw else (inst_map[local] > 0).astype(np.float32)
    types = type_map[local] if type_map is not None else np.zeros(prob.shape, np.int64)
    return {
        "centroid": np.array([(x, y) for _, _, x, y in kept], np.float64).reshape(-1, 2),
        "bbox": np.array([np.asarray(e["bbox"]).ravel() for _, e, _, _ in kept], np.int64).reshape(-1, 4)
        + np.array([top, left, top, left]),
        "type": np.array([-1 if e.get("type") is None else int(e["type"]) for _, e, _, _ in kept], np.int64),
        "type_prob": np.array([np.nan if e.get("type_prob") is None else float(e["type_prob"])
                               for _, e, _, _ in kept], np.float64),
        "area": np.array([areas[i] for i, _, _, _ in kept], np.int64),
        "contour": np.concatenate(contours or [np.zeros((0, 2))]).astype(np.int32),
        "contour_offset": np.cumsum([0] + [len(c) for c in contours]).astype(np.int64),
        "ring": np.concatenate(rings or [np.zeros((0, 2))]).astype(np.float32),
        "ring_offset": np.cumsum([0] + [len(r) for r in rings]).astype(np.int64),
        "overlay": tile_overlay(np.asarray(prob, np.float32), types, colours, factor),
    }


def save_tile(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a tile's arrays atomically as ``.npz``."""
    with atomic_write(path, "wb") as handle:
        np.savez(handle, **arrays)


def load_tile(path: Path) -> dict[str, np.ndarray]:
    """Read a tile written by :func:`save_tile`."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


# ----------------------------------------------------------------------------- the store and its journal


class RawStore:
    """The chunked HDF5 store of window outputs and the journal of finished batches.

    Only the writer thread touches the HDF5 file (h5py serialises calls anyway).
    """

    def __init__(self, work: Path) -> None:
        import h5py

        self.path, self.journal_path = work / "raw.h5", work / "batches.done"
        self.done: set[int] = set()
        try:
            self.h5 = h5py.File(self.path, "a")
            if self.journal_path.is_file():
                self.done = {int(line) for line in self.journal_path.read_text().split()}
        except (OSError, ValueError) as err:  # a store a kill left unreadable: start it again
            log.warning("%s: unreadable after an interruption (%s); its batches run again", self.path, err)
            self.path.unlink(missing_ok=True)
            self.journal_path.unlink(missing_ok=True)
            self.done = set()
            self.h5 = h5py.File(self.path, "w")
        self.journal = open(self.journal_path, "a")

    def write(self, outputs: dict[str, np.ndarray], keep: np.ndarray, out_starts: np.ndarray,
              shape: tuple[int, int]) -> None:
        """Put each window's kept box into the store, one write per run of abutting windows.

        Args:
            outputs: named (N, O, O, C) float32 maps.
            keep: (N, 4) kept boxes (r0, r1, c0, c1), row-major (a grid row's windows abut).
            out_starts: (N, 2) output-window starts (row, col) in slide coordinates.
        """
        runs, start = [], 0
        for k in range(1, len(keep) + 1):  # windows of one grid row whose boxes abut
            if k == len(keep) or keep[k, 0] != keep[start, 0] or keep[k, 2] != keep[k - 1, 3]:
                runs.append((start, k))
                start = k
        for name, values in outputs.items():
            if values.ndim != 4:
                raise UserError(f"output '{name}' is one vector per window {values.shape}; slides store "
                                "(N, h, w, C) maps (run per-window classifiers on image folders)")
            if name not in self.h5:
                self.h5.create_dataset(name, shape=(*shape, values.shape[3]), dtype="f2", fillvalue=0,
                                       chunks=(min(STORE_CHUNK, shape[0]), min(STORE_CHUNK, shape[1]),
                                               values.shape[3]))
            dataset = self.h5[name]
            for first, stop in runs:
                r0, r1 = keep[first, 0], keep[first, 1]
                pieces = [values[k, r0 - out_starts[k, 0] : r1 - out_starts[k, 0],
                                 keep[k, 2] - out_starts[k, 1] : keep[k, 3] - out_starts[k, 1]] for k in range(first, stop)]
                dataset[r0:r1, keep[first, 2] : keep[stop - 1, 3]] = np.concatenate(pieces, axis=1).astype(np.float16)

    def commit(self, batch: int) -> None:
        """Flush the store, then record ``batch`` as finished (in that order)."""
        self.h5.flush()
        self.journal.write(f"{batch}\n")
        self.journal.flush()
        os.fsync(self.journal.fileno())
        self.done.add(batch)

    def read(self, box: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
        """Named (h, w, C) float32 maps of a box (zeros where no window wrote)."""
        r0, r1, c0, c1 = box
        return {name: self.h5[name][r0:r1, c0:c1].astype(np.float32) for name in self.h5}

    def close(self) -> None:
        """Close the store and the journal."""
        self.journal.close()
        self.h5.close()


# ----------------------------------------------------------------------------- outputs


@dataclass
class OutputContext:
    """What the output writers need to know about the slide."""

    stem: str
    slide: Slide
    net_mpp: float
    type_info: TypeInfo | None
    family_name: str

    @property
    def scale(self) -> float:
        """Level-0 pixels per network pixel."""
        return self.net_mpp / self.slide.mpp


def iter_nuclei(tile_paths: list[Path]) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Each tile's arrays (in tile order) with the id of its first nucleus (ids 1..N over the slide)."""
    next_id = 1
    for path in tile_paths:
        arrays = load_tile(path)
        yield arrays, next_id
        next_id += len(arrays["centroid"])


def _records(arrays: dict[str, np.ndarray], first_id: int, ctx: OutputContext) -> Iterator[dict[str, Any]]:
    """Per nucleus of a tile: id, level-0 corner centroid, ring, centre-convention contour, type, area."""
    s = ctx.scale
    for k in range(len(arrays["centroid"])):
        ring = arrays["ring"][arrays["ring_offset"][k] : arrays["ring_offset"][k + 1]].astype(np.float64) * s
        contour = arrays["contour"][arrays["contour_offset"][k] : arrays["contour_offset"][k + 1]]
        kind = int(arrays["type"][k])
        yield {
            "id": first_id + k,
            "centroid": (arrays["centroid"][k] + 0.5) * s,  # corner convention
            "ring": ring,
            "contour": np.rint((contour + 0.5) * s - 0.5).astype(np.int64),  # level-0 pixel centres
            "bbox": np.rint(arrays["bbox"][k] * s).astype(np.int64),  # (rmin, cmin, rmax, cmax), max exclusive
            "type": None if kind < 0 else kind,
            "type_prob": None if np.isnan(arrays["type_prob"][k]) else float(arrays["type_prob"][k]),
            "area_net": int(arrays["area"][k]),
        }


def write_outputs(out_dir: Path, tile_paths: list[Path], ctx: OutputContext, mag: float) -> dict[str, Any]:
    """Write the GeoJSON, the database and the HoVer-Net JSON in one pass over the tiles.

    Returns:
        ``{'nuclei': N, 'per_type': {type or None: count}}``.
    """
    stem = ctx.stem
    counts: dict[int | None, int] = {}
    meta = {"slide": str(ctx.slide.path), "slide_mpp": ctx.slide.mpp, "network_mpp": ctx.net_mpp,
            "coordinates": "level-0 pixels, pixel-corner convention", "family": ctx.family_name}
    with atomic_write(out_dir / f"{stem}{OUTPUT_SUFFIXES['geojson']}", "w") as geo, \
            atomic_write(out_dir / f"{stem}{OUTPUT_SUFFIXES['json']}", "w") as hov, \
            NucleiWriter(out_dir / f"{stem}{OUTPUT_SUFFIXES['db']}", meta, ctx.type_info) as db:
        geo.write('{"type": "FeatureCollection", "features": [')
        hov.write(f'{{"mag": {json.dumps(mag)}, "nuc": {{')
        first = True
        for arrays, first_id in iter_nuclei(tile_paths):
            rows = []
            for rec in _records(arrays, first_id, ctx):
                counts[rec["type"]] = counts.get(rec["type"], 0) + 1
                separator = "" if first else ", "
                first = False
                geo.write(separator + json.dumps(_feature(rec, ctx.type_info)))
                hov.write(separator + f'"{rec["id"]}": ' + json.dumps(_hovernet_entry(rec)))
                rows.append(_db_row(rec, ctx))
            db.add(rows)
        geo.write("]}")
        hov.write("}}")
        db.commit()
    return {"nuclei": sum(counts.values()), "per_type": counts}


def _feature(rec: dict[str, Any], type_info: TypeInfo | None) -> dict[str, Any]:
    ring = rec["ring"]
    name, colour = type_class(rec["type"], type_info)
    properties: dict[str, Any] = {"objectType": "detection", "classification": {"name": name, "color": list(colour)}}
    if rec["type_prob"] is not None:
        properties["measurements"] = {"type_prob": rec["type_prob"]}
    return {"type": "Feature", "id": str(rec["id"]),
            "geometry": {"type": "Polygon", "coordinates": [np.vstack([ring, ring[:1]]).round(3).tolist()]},
            "properties": properties}


def _hovernet_entry(rec: dict[str, Any]) -> dict[str, Any]:
    rmin, cmin, rmax, cmax = (int(v) for v in rec["bbox"])
    return {"bbox": [[rmin, cmin], [rmax, cmax]], "centroid": [float(v) - 0.5 for v in rec["centroid"]],
            "contour": rec["contour"].tolist(), "type_prob": rec["type_prob"], "type": rec["type"]}


def _db_row(rec: dict[str, Any], ctx: OutputContext) -> tuple:
    ring = rec["ring"]
    (x0, y0), (x1, y1) = ring.min(axis=0), ring.max(axis=0)
    wkb = polygon_wkb(ring)
    return (rec["id"], float(rec["centroid"][0]), float(rec["centroid"][1]), float(x0), float(y0), float(x1),
            float(y1), rec["type"], rec["type_prob"], rec["area_net"] * ctx.scale**2,
            rec["area_net"] * ctx.net_mpp**2, wkb)


def assemble_overlay(path: Path, tiles: list[tuple[Path, tuple[int, int, int, int]]], shape: tuple[int, int],
                     factor: int) -> Any:
    """The overlay (ceil(H / f), ceil(W / f), 3) uint8 as an HDF5 dataset at ``path``, white
    where no tile was processed."""
    import h5py

    height, width = math.ceil(shape[0] / factor), math.ceil(shape[1] / factor)
    store = h5py.File(path, "w")
    overlay = store.create_dataset("overlay", shape=(height, width, 3), dtype=np.uint8, fillvalue=255,
                                   chunks=(min(height, 256), min(width, 256), 3))
    for tile_path, core in tiles:
        with np.load(tile_path, allow_pickle=False) as data:
            piece = data["overlay"]
        overlay[core[0] // factor : core[0] // factor + piece.shape[0],
                core[2] // factor : core[2] // factor + piece.shape[1]] = piece
    return store


def thumbnail(image: np.ndarray, overlay: Any, band: int = 256) -> np.ndarray:
    """The slide thumbnail (h, w, 3) uint8 multiplied by the overlay resized to it, band by band."""
    height, width = image.shape[:2]
    ratio = overlay.shape[0] / height
    out = np.empty_like(image)
    for y in range(0, height, band):
        y1 = min(height, y + band)
        o0, o1 = int(math.floor(y * ratio)), max(int(math.floor(y * ratio)) + 1, int(math.ceil(y1 * ratio)))
        piece = cv2.resize(np.asarray(overlay[o0:o1]), (width, y1 - y), interpolation=cv2.INTER_AREA)
        out[y:y1] = (image[y:y1].astype(np.uint16) * piece // 255).astype(np.uint8)
    return out


def overlay_factor(net_mpp: float, overlay_mpp: float, tile: int) -> int:
    """Power-of-two reduction nearest to ``overlay_mpp / net_mpp``, at most the largest power of
    two dividing ``tile`` (so that every tile's overlay piece starts on an overlay pixel)."""
    exponent = max(0, round(math.log2(max(overlay_mpp / net_mpp, 1.0))))
    return int(min(2**exponent, tile & -tile))


# ----------------------------------------------------------------------------- what each task writes


@dataclass
class FinishedSlide:
    """A slide whose tiles are all post-processed: what the task's output writer needs.

    Attributes:
        tile_paths: every processing tile's ``.npz``, in tile order.
        factor: reduction of the overlay / class map from the network's resolution.
        low_res: (h, w, 3) uint8 slide at the tissue mask's resolution.
    """

    family: Any
    options: SlideOptions
    slide: Slide
    view: SlideView
    out_dir: Path
    work: Path
    grid: Grid
    tile_paths: list[Path]
    net_mpp: float
    factor: int
    low_res: np.ndarray
    tissue_mm2: float

    @property
    def stem(self) -> str:
        """The slide's file stem (output names)."""
        return self.slide.path.stem

    def cores(self) -> list[tuple[Path, tuple[int, int, int, int]]]:
        """Each tile's file and core box."""
        return [(path, self.grid.core(*self.grid.tiles[i])) for i, path in enumerate(self.tile_paths)]


@dataclass(frozen=True)
class SlideTask:
    """How the results of one task (``Family.task_for('infer')``) are made and written on slides.

    Attributes:
        tile: ``(family, options, mag, factor) -> process``, where ``process(raw, extended,
            core)`` post-processes one tile's maps into the arrays its ``.npz`` keeps.
        outputs: writes the slide's outputs from a :class:`FinishedSlide`; returns the task's
            part of the summary.
    """

    tile: Callable[[Any, SlideOptions, float, int], Callable[..., dict[str, np.ndarray]]]
    outputs: Callable[[FinishedSlide], dict[str, Any]]


def _instance_tile(family: Any, options: SlideOptions, mag: float, factor: int) -> Callable[..., dict]:
    type_count = int(family.cfg.get("model", {}).get("nr_types") or 0)
    colours = overlay_colours(options.type_info, max(type_count, len(PALETTE) + 1))
    return functools.partial(process_tile, family, mag=mag, colours=colours, factor=factor)


def _instance_outputs(done: FinishedSlide) -> dict[str, Any]:
    """Nuclei GeoJSON, database and HoVer-Net JSON, the overlay pyramid and the thumbnail."""
    stem, out_dir, type_info = done.stem, done.out_dir, done.options.type_info
    ctx = OutputContext(stem, done.slide, done.net_mpp, type_info, done.family.name)
    written = write_outputs(out_dir, done.tile_paths, ctx, mag=round(10.0 / done.slide.mpp, 3))
    with contextlib.closing(assemble_overlay(done.work / "overlay.h5", done.cores(), done.view.shape,
                                             done.factor)) as store:
        write_pyramid_tiff(out_dir / f"{stem}{OUTPUT_SUFFIXES['overlay']}", store["overlay"],
                           mpp=done.net_mpp * done.factor)
        write_image(out_dir / f"{stem}{OUTPUT_SUFFIXES['thumbnail']}", thumbnail(done.low_res, store["overlay"]))
    per_type = {type_class(t, type_info)[0]: n for t, n in sorted(written["per_type"].items(),
                                                                  key=lambda item: -1 if item[0] is None else item[0])}
    tissue = done.tissue_mm2
    density = {name: (n / tissue if tissue > 0 else 0.0) for name, n in per_type.items()}
    return {
        "nuclei": int(written["nuclei"]),
        "nuclei_per_type": per_type,
        "nuclei_per_mm2": {"all": (written["nuclei"] / tissue if tissue > 0 else 0.0), **density},
        "overlay_mpp": done.net_mpp * done.factor,
    }


def slide_class_info(family: Any, options: SlideOptions) -> TypeInfo | None:
    """The classes of a semantic family's slide outputs: ``--type-info``, else the family's
    ``postproc.class_info``, else None (generic names)."""
    return options.type_info if options.type_info is not None else family.class_info()


def _semantic_tile(family: Any, options: SlideOptions, mag: float, factor: int) -> Callable[..., dict]:
    return functools.partial(process_semantic_tile, family, mag=mag, factor=factor,
                             class_info=slide_class_info(family, options))


def _semantic_outputs(done: FinishedSlide) -> dict[str, Any]:
    """The class map at ``net_mpp x factor`` through :func:`postproc.slide_semantic.write_slide_classes`;
    class areas at the network's resolution for the summary. Where no tile ran the map holds
    class 0, the background (named ``background``, white, when the class info lacks id 0)."""
    pixels = class_pixels(done.tile_paths)
    class_info = slide_class_info(done.family, done.options) or generic_class_info(np.array([0, *pixels]))
    class_info = {0: BACKGROUND_CLASS, **class_info} if 0 not in class_info else class_info
    with contextlib.closing(assemble_classes(done.work / "classes.h5", done.cores(), done.view.shape,
                                             done.factor, max(class_info))) as store:
        confidence = store["confidence"] if "confidence" in store else None
        written = write_slide_classes(done.out_dir, done.stem, store["classes"][...],
                                      done.net_mpp * done.factor / done.slide.mpp, class_info, done.slide.mpp,
                                      prob=confidence)
    area = {class_info[c][0]: pixels.get(c, 0) * done.net_mpp**2 / 1e6 for c in sorted(class_info)}
    return {
        "class_mpp": written["class_mpp"],
        "class_area_mm2": area,
        "class_share_of_tissue": {name: (mm2 / done.tissue_mm2 if done.tissue_mm2 > 0 else 0.0)
                                  for name, mm2 in area.items()},
    }


#: What each task gives on slides (a family's other tasks are refused).
SLIDE_TASKS: dict[str, SlideTask] = {
    "instance": SlideTask(_instance_tile, _instance_outputs),
    "semantic": SlideTask(_semantic_tile, _semantic_outputs),
}


# ----------------------------------------------------------------------------- the run


class _Failure:
    """An exception raised in a worker thread, handed to the main thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _plan_fingerprint(grid: Grid, family: Any, spec: TileSpec, net_mpp: float, slide: Slide) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([family.name, family.cfg, dataclasses.asdict(spec), net_mpp, slide.mpp,
                              list(slide.dimensions), grid.batch_size, grid.tile, grid.margin], sort_keys=True,
                             default=str).encode())
    digest.update(grid.windows.tobytes())
    return digest.hexdigest()


def _prepare_work(work: Path, fingerprint: str) -> None:
    """Keep ``work`` when it belongs to the same plan, else start it afresh."""
    marker = work / "plan.sha256"
    if work.is_dir() and (not marker.is_file() or marker.read_text().strip() != fingerprint):
        log.info("%s: left by a run with other settings; starting afresh", work)
        shutil.rmtree(work)
    (work / "tiles").mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        with atomic_write(marker, "w") as handle:
            handle.write(fingerprint)


def _load_errors(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_slide(family: Any, net: nn.Module, slide_path: str | os.PathLike, output_dir: str | os.PathLike,
              device: str | torch.device, options: SlideOptions = SlideOptions()) -> SlideResult:
    """Run a family over one slide (see the module docstring); resumable.

    Args:
        family: an instance family (``predict``, ``postprocess``).
        net: its network, on ``device``.
        slide_path: the slide file.
        output_dir: the outputs go to ``output_dir/<slide stem>/``.
        device: the network's device.
        options: see :class:`SlideOptions`.

    Returns:
        The :class:`SlideResult` (``skipped`` when the slide's summary already existed).

    Raises:
        UserError: not a slide, no pixel size, a bad mask, or an output that cannot be written.
    """
    options.check()
    try:
        return _run_slide(family, net, slide_path, output_dir, device, options)
    except OSError as err:  # e.g. a full disk: one line naming the file
        raise write_failure(Path(err.filename or output_dir), err) from None


def _run_slide(family: Any, net: nn.Module, slide_path: str | os.PathLike, output_dir: str | os.PathLike,
               device: str | torch.device, options: SlideOptions) -> SlideResult:
    """:func:`run_slide` without the translation of write failures."""
    clock = {"start": time.perf_counter()}
    seconds: dict[str, float] = {}

    def lap(stage: str) -> None:
        now = time.perf_counter()
        seconds[stage] = round(seconds.get(stage, 0.0) + now - clock["start"], 3)
        clock["start"] = now

    slide = open_slide(slide_path, options.slide_mpp)
    stem = slide.path.stem
    out_dir = Path(output_dir) / stem
    summary_path = out_dir / f"{stem}{OUTPUT_SUFFIXES['summary']}"
    if summary_path.is_file():
        slide.close()
        log.info("%s: already done (%s exists)", slide.path, summary_path)
        return SlideResult(slide.path, out_dir, True, json.loads(summary_path.read_text()))
    infer_cfg = family.cfg["infer"]
    net_mpp = network_mpp(infer_cfg)
    spec = dataclasses.replace(TileSpec.from_config(infer_cfg), scale=1.0)
    if spec.resize_shorter is not None:
        raise UserError(f"family '{family.name}' predicts whole images (infer.resize_shorter); slides need windows")
    task = family.task_for("infer")
    if task not in SLIDE_TASKS:
        raise UserError(f"family '{family.name}' gives {task} results; slides take families with "
                        f"{' or '.join(SLIDE_TASKS)} results")
    check_adapt_weight(infer_cfg.get("bn_adapt") or 0.0)
    view = slide.view(net_mpp)
    lap("open")

    mask_mpp = mask_mpp_for(slide.mpp, slide.dimensions)
    low_res, thumb_errors = slide.view(mask_mpp).read_downsampled()
    if options.mask is not None:
        mask = load_mask(options.mask, low_res.shape[:2], (slide.dimensions[1], slide.dimensions[0]))
    else:
        mask = tissue_mask(low_res, mask_mpp)
    tissue_mm2 = float(mask.sum()) * mask_mpp**2 / 1e6
    lap("tissue")

    batch_size = int(options.batch_size or infer_cfg.get("batch_size", 8))
    grid = plan_grid(view.shape, spec, mask, mask.shape[0] / view.shape[0], batch_size, options.tile, options.margin)
    work = out_dir / WORK
    _prepare_work(work, _plan_fingerprint(grid, family, spec, net_mpp, slide))
    write_image(out_dir / f"{stem}{OUTPUT_SUFFIXES['tissue']}", np.repeat(mask[..., None] * np.uint8(255), 3, 2))
    factor = overlay_factor(net_mpp, options.overlay_mpp, options.tile)
    colour = None
    if getattr(family, "reinhard_target", None) is not None:
        from loader.colour import lab_statistics

        tissue_pixels = low_res[mask] if mask.any() else low_res.reshape(-1, 3)
        colour = reinhard_transform(lab_statistics(tissue_pixels.reshape(-1, 1, 3)), family.reinhard_target)

    tile_paths = {i: work / "tiles" / f"{r}_{c}.npz" for i, (r, c) in enumerate(grid.tiles)}
    pending_tiles = [i for i in tile_paths if not tile_paths[i].is_file()]
    slide_task = SLIDE_TASKS[task]
    process = slide_task.tile(family, options, 10.0 / net_mpp, factor)
    _network_stage(family, net, device, grid, view, spec, work, options, pending_tiles, tile_paths, process, colour,
                   stem, seconds, lap)

    finished = FinishedSlide(family, options, slide, view, out_dir, work, grid,
                             [tile_paths[i] for i in range(len(grid.tiles))], net_mpp, factor, low_res, tissue_mm2)
    results = slide_task.outputs(finished)
    lap("outputs")
    seconds["total"] = round(sum(v for k, v in seconds.items() if not k.endswith("_busy")), 3)

    errors = _load_errors(work / "errors.jsonl") + [
        {"box": list(e.box), "level0_box": _level0_box(e.box, mask_mpp / slide.mpp), "reason": e.reason,
         "stage": "tissue"} for e in thumb_errors]
    summary = _summary(slide, view, grid, tissue_mm2, mask_mpp, net_mpp, task, results, errors, seconds,
                       options.mask)
    with atomic_write(summary_path, "w") as handle:
        json.dump(summary, handle, indent=1)
    shutil.rmtree(work, ignore_errors=True)
    slide.close()
    return SlideResult(slide.path, out_dir, False, summary)


def _level0_box(box: tuple[int, int, int, int] | list[int], scale: float) -> list[int]:
    x, y, width, height = box
    return [int(round(x * scale)), int(round(y * scale)), int(round(width * scale)), int(round(height * scale))]


def adaptation_cells(windows: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` of the (n, 2) tissue windows, spread evenly over them (row-major order)."""
    if len(windows) <= count:
        return windows
    return windows[np.unique(np.linspace(0, len(windows) - 1, count).round().astype(np.int64))]


def adapted_to_slide(family: Any, net: nn.Module, device: torch.device, amp_dtype: torch.dtype | None,
                     reader: WindowReader, grid: Grid, count: int) -> contextlib.AbstractContextManager:
    """Context in which ``net``'s BatchNorm statistics are adapted to the slide (``infer.bn_adapt``
    = w > 0, see :func:`inference.predict.adapted_batchnorm`): up to ``count`` tissue windows
    spread evenly over the slide (:func:`adaptation_cells`, the same on every run, so a resumed
    slide is adapted as before) run through the network in batches, without TTA, and each
    BatchNorm layer normalises with w x their statistics + (1 - w) x the trained ones. w = 0:
    nothing changes."""
    weight = check_adapt_weight(family.cfg["infer"].get("bn_adapt") or 0.0)
    if weight == 0.0:
        return contextlib.nullcontext()
    observe = family_predictor(with_infer_overrides(family, tta=False), net, device, amp_dtype)
    cells = adaptation_cells(grid.windows, count)

    def collect() -> None:
        for start in range(0, len(cells), grid.batch_size):
            observe(reader.cells(cells[start : start + grid.batch_size])[0])

    return adapted_batchnorm(net, weight, collect)


def _network_stage(family: Any, net: nn.Module, device: str | torch.device, grid: Grid, view: SlideView,
                   spec: TileSpec, work: Path, options: SlideOptions, pending_tiles: list[int],
                   tile_paths: dict[int, Path], process: Callable[..., dict[str, np.ndarray]],
                   colour: Callable | None, stem: str, seconds: dict[str, float], lap: Callable[[str], None]) -> None:
    """Run the batches unfinished tiles need, storing outputs and post-processing tiles as they complete
    (``process(raw, extended, core)`` -> the tile's arrays)."""
    store = RawStore(work)
    needed = sorted(set().union(*(set(grid.tile_batches[i].tolist()) for i in pending_tiles)) - store.done) \
        if pending_tiles else []
    remaining = {i: set(grid.tile_batches[i].tolist()) - store.done for i in pending_tiles}
    waiting_on: dict[int, list[int]] = {}
    for i, batches in remaining.items():
        for b in batches:
            waiting_on.setdefault(b, []).append(i)
    device = torch.device(device)
    amp_dtype = inference_precision(family, net, device)
    predict = family_predictor(family, net, device, amp_dtype)
    reader = WindowReader(view, grid, spec.input_size, options.readers, colour)
    batches_q: queue.Queue = queue.Queue(maxsize=options.prefetch)
    results_q: queue.Queue = queue.Queue(maxsize=options.prefetch)
    errors_file = open(work / "errors.jsonl", "a")
    postproc = ThreadPoolExecutor(max_workers=options.postproc_workers, thread_name_prefix="slide-postproc")
    futures: list[Future] = []
    timing = {"network": 0.0, "read_wait": 0.0, "store": 0.0, "postproc": 0.0}
    lock = threading.Lock()
    stop = threading.Event()

    def read_ahead() -> None:
        try:
            for b in needed:
                if stop.is_set():
                    return
                batches_q.put((b, *reader.batch(b)))
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            batches_q.put(_Failure(err))

    def run_tile(i: int, raw: dict[str, np.ndarray]) -> None:
        start = time.perf_counter()
        row, col = grid.tiles[i]
        arrays = process(raw, grid.extended(row, col), grid.core(row, col))
        save_tile(tile_paths[i], arrays)
        with lock:
            timing["postproc"] += time.perf_counter() - start

    def submit(i: int) -> None:
        while len([f for f in futures if not f.done()]) > options.postproc_workers + 1:
            next(f for f in futures if not f.done()).result()  # bound the tiles held in memory
        futures.append(postproc.submit(run_tile, i, store.read(grid.extended(*grid.tiles[i]))))

    def write_behind() -> None:
        try:
            for i in [i for i, batches in remaining.items() if not batches]:
                submit(i)
            while True:
                item = results_q.get()
                if item is None:
                    return
                start = time.perf_counter()
                b, outputs, region_errors = item
                cells = grid.windows[b * grid.batch_size : (b + 1) * grid.batch_size]
                out_starts = np.stack([grid.rows.output_starts[cells[:, 0]], grid.cols.output_starts[cells[:, 1]]], 1)
                store.write(outputs, grid.keep[b * grid.batch_size : (b + 1) * grid.batch_size], out_starts, grid.shape)
                for error in region_errors:
                    errors_file.write(json.dumps({"box": list(error.box), "level0_box": _level0_box(
                        error.box, view.mpp / view.slide.mpp), "reason": error.reason, "stage": "network"}) + "\n")
                errors_file.flush()
                store.commit(b)
                with lock:
                    timing["store"] += time.perf_counter() - start
                for i in waiting_on.get(b, []):
                    remaining[i].discard(b)
                    if not remaining[i]:
                        submit(i)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            failures.append(err)
            stop.set()
            while results_q.get() is not None:  # keep the network thread from blocking on a full queue
                pass

    def next_batch() -> Any:
        """The reader's next item, without waiting forever on a reader or writer that stopped."""
        while True:
            if failures:
                raise failures[0]
            with contextlib.suppress(queue.Empty):
                return batches_q.get(timeout=0.5)

    failures: list[BaseException] = []
    lap("setup")
    reader_thread = threading.Thread(target=read_ahead, name="slide-reader", daemon=True)
    writer_thread = threading.Thread(target=write_behind, name="slide-writer", daemon=True)
    reader_thread.start()
    writer_thread.start()
    total = len(grid.windows)
    done_windows = total - sum(len(grid.windows[b * grid.batch_size : (b + 1) * grid.batch_size]) for b in needed)
    bar = tqdm(total=total, initial=done_windows, unit="window", desc=stem, disable=not options.show_progress,
               dynamic_ncols=True)
    was_training = net.training
    net.eval()
    adaptation = contextlib.ExitStack()
    try:
        if needed:
            start = time.perf_counter()
            adaptation.enter_context(adapted_to_slide(family, net, device, amp_dtype, reader, grid,
                                                      options.bn_adapt_windows))
            timing["bn_adapt"] = time.perf_counter() - start
        for _ in needed:
            start = time.perf_counter()
            item = next_batch()
            timing["read_wait"] += time.perf_counter() - start
            if isinstance(item, _Failure):
                raise item.error
            b, windows, region_errors = item
            start = time.perf_counter()
            outputs = predict(windows)
            timing["network"] += time.perf_counter() - start
            results_q.put((b, outputs, region_errors))
            bar.update(len(windows))
        results_q.put(None)
        writer_thread.join()
        if failures:
            raise failures[0]
        lap("network")
        for future in futures:
            future.result()
    except BaseException:
        stop.set()
        with contextlib.suppress(queue.Full):
            results_q.put(None, timeout=5)
        with contextlib.suppress(queue.Empty):
            while True:  # unblock a reader waiting to hand over a batch; it stops at the next one
                batches_q.get_nowait()
        writer_thread.join(timeout=60)
        raise
    finally:
        adaptation.close()
        net.train(was_training)
        bar.close()
        reader.close()
        postproc.shutdown(wait=True, cancel_futures=True)
        errors_file.close()
        store.close()
    lap("postproc_tail")
    seconds.update({f"{key}_busy": round(value, 3) for key, value in timing.items()})


def _summary(slide: Slide, view: SlideView, grid: Grid, tissue_mm2: float, mask_mpp: float, net_mpp: float,
             task: str, results: dict[str, Any], errors: list[dict], seconds: dict[str, float],
             mask_file: Any) -> dict[str, Any]:
    """The summary JSON: the slide, its geometry and tissue, the task's ``results``, errors, seconds."""
    return {
        "slide": str(slide.path),
        "backend": slide.backend,
        "dimensions": list(slide.dimensions),
        "slide_mpp": slide.mpp,
        "mpp_source": "metadata" if slide.metadata_mpp == slide.mpp else "--slide-mpp",
        "network_mpp": net_mpp,
        "level_read": view.level,
        "network_shape": list(view.shape),
        "tissue_mask": {"mpp": mask_mpp, "source": str(mask_file) if mask_file else "saturation/otsu"},
        "tissue_mm2": round(tissue_mm2, 6),
        "tissue_found": bool(tissue_mm2 > 0),
        "windows": {"grid": int(len(grid.rows.input_starts) * len(grid.cols.input_starts)),
                    "run": int(len(grid.windows)), "batch_size": grid.batch_size},
        "tiles": {"processed": int(len(grid.tiles)), "side": grid.tile, "margin": grid.margin},
        "task": task,
        **results,
        "unreadable_regions": errors,
        "seconds": seconds,
    }


def shard(paths: list[Path], rank: int, world: int) -> list[Path]:
    """The slides of process ``rank`` of ``world`` (``torchrun`` ranks): every world-th from rank."""
    return paths[rank::world]


def run_slides(family: Any, net: nn.Module, paths: list[Path], output_dir: str | os.PathLike,
               device: str | torch.device, options: SlideOptions = SlideOptions()) -> list[SlideResult]:
    """:func:`run_slide` over ``paths`` in order (each slide resumable on its own)."""
    results = []
    for path in paths:
        result = run_slide(family, net, path, output_dir, device, options)
        if not result.skipped:
            summary = result.summary
            log.info("%s: %d nuclei in %.3f mm² of tissue, %.1f s; outputs in %s", path.name, summary["nuclei"],
                     summary["tissue_mm2"], summary["seconds"]["total"], result.output_dir)
        results.append(result)
    return results
