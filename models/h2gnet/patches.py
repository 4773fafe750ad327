"""Detection-stage patches: the non-overlapping patch grid of a slide, its labels from a tumour
annotation (QuPath GeoJSON or a mask image), and a dataset that reads patches on the fly.

A slide's patch grid has ``size x size`` patches at ``mpp`` µm per pixel (the paper's ×10,
about 1 µm/px), row-major from the top-left corner; the view's remainder (under one patch) is
left out. Each patch's tumour and tissue fractions are measured on ``points x points`` sample
points at the centres of its sub-cells, in level-0 coordinates: a GeoJSON annotation is
rasterised at those points (pixel-corner vertices, as QuPath writes them), a mask image that
covers the whole slide is looked up there. A patch is tumour when its tumour fraction is at
least ``label_threshold``; patches with less tissue than ``min_tissue`` are left out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from skimage.draw import polygon as draw_polygon
from torch.utils.data import Dataset

from loader.readers.annotations import geojson_polygons
from misc.errors import UserError
from misc.io import read_image, read_label
from models.h2gnet.augment import Augment, augment_patch
from models.h2gnet.slides import SlideLike, SlideViewLike, level0_shape

#: QuPath's built-in tumour class and its common spellings.
TUMOUR_CLASSES = ("Tumor", "Tumour", "tumor", "tumour")
#: Annotation vertices may lie this many level-0 pixels beyond the slide's edges.
BOUNDS_TOLERANCE = 1.0
#: Largest relative difference between a mask's and its slide's aspect ratios.
ASPECT_TOLERANCE = 0.02
NON_TUMOUR, TUMOUR = 0, 1


@dataclass(frozen=True)
class PatchGrid:
    """Non-overlapping patches of ``size`` px at ``mpp`` µm/px over a slide of level-0 (H, W) ``shape``.

    Attributes:
        rows, cols: patches down and across.
        step0: level-0 pixels per patch side (``size * mpp / slide mpp``).
    """

    mpp: float
    size: int
    rows: int
    cols: int
    step0: float
    shape: tuple[int, int]

    @classmethod
    def for_slide(cls, slide: SlideLike, mpp: float, size: int) -> "PatchGrid":
        """The grid of ``slide`` (the view at ``mpp`` gives the patch counts)."""
        if size < 1:
            raise UserError(f"patch size {size} must be at least 1 px")
        view_h, view_w = slide.view(mpp).shape
        return cls(float(mpp), int(size), view_h // size, view_w // size, size * mpp / slide.mpp, level0_shape(slide))

    def sample_points(self, points: int) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 (row, col) coordinates of ``points`` x ``points`` sample points per patch.

        Returns:
            ``(rows, cols)``: (self.rows * points,) and (self.cols * points,) float64, the centres
            of the patches' sub-cells (sub-cell j of patch i is at ``(i * points + j + 0.5) * step0 / points``).
        """
        cell = self.step0 / points
        return (np.arange(self.rows * points) + 0.5) * cell, (np.arange(self.cols * points) + 0.5) * cell


def _per_patch(values: np.ndarray, points: int) -> np.ndarray:
    """(rows, cols) float32 means of (rows * points, cols * points) sample values over each patch."""
    rows, cols = values.shape[0] // points, values.shape[1] // points
    return values.reshape(rows, points, cols, points).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def _class_label(name: str | None) -> str:
    return "unclassified" if name is None else repr(name)


def tumour_polygons(path: str | os.PathLike, shape: tuple[int, int],
                    classes: Sequence[str] = TUMOUR_CLASSES) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """The tumour polygons of a QuPath GeoJSON annotation of a slide of level-0 (H, W) ``shape``.

    Returns:
        ``(exterior, holes)`` pairs of (K, 2) (x, y) level-0 pixel-corner vertices.

    Raises:
        UserError: no feature of a tumour class (the message names the classes found), or a
            feature outside the slide (names it, its bounding box and the slide's size).
    """
    features = geojson_polygons(path)
    height, width = shape
    for index, (name, parts) in enumerate(features, start=1):
        vertices = np.concatenate([ring for exterior, holes in parts for ring in [exterior, *holes]])
        low, high = vertices.min(axis=0), vertices.max(axis=0)
        if (low < -BOUNDS_TOLERANCE).any() or high[0] > width + BOUNDS_TOLERANCE or high[1] > height + BOUNDS_TOLERANCE:
            raise UserError(
                f"{path}: annotation {index} ({_class_label(name)}) spans x {low[0]:.0f}..{high[0]:.0f}, "
                f"y {low[1]:.0f}..{high[1]:.0f}, outside the slide's {width}x{height} px; "
                "is it the annotation of another slide, or of another resolution?")
    tumour = [part for name, parts in features if name in classes for part in parts]
    if not tumour:
        found = sorted({_class_label(name) for name, _ in features}) or ["no polygon annotations"]
        raise UserError(f"{path}: no annotation of a tumour class {list(classes)}; the file has {', '.join(found)} "
                        "(set data.tumour_classes to the class that marks tumour)")
    return tumour


def rasterise_at(parts: Sequence[tuple[np.ndarray, list[np.ndarray]]], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Which of the sample points (every ``rows[i]``, ``cols[j]``) lie inside the polygons.

    The points must be evenly spaced from half a spacing (as :meth:`PatchGrid.sample_points`
    gives them); a point is inside when it is inside an exterior and in none of its holes.

    Returns:
        (len(rows), len(cols)) bool.
    """
    step_r, step_c = rows[1] - rows[0] if len(rows) > 1 else 2 * rows[0], cols[1] - cols[0] if len(cols) > 1 else 2 * cols[0]
    inside = np.zeros((len(rows), len(cols)), bool)
    for exterior, holes in parts:
        region = np.zeros_like(inside)
        # sample point (i, j) sits at level-0 ((i + 0.5) step_r, (j + 0.5) step_c): grid coordinate = v / step - 0.5
        region[draw_polygon(exterior[:, 1] / step_r - 0.5, exterior[:, 0] / step_c - 0.5, shape=inside.shape)] = True
        for hole in holes:
            region[draw_polygon(hole[:, 1] / step_r - 0.5, hole[:, 0] / step_c - 0.5, shape=inside.shape)] = False
        inside |= region
    return inside


def read_mask_image(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """A mask image covering a slide of level-0 (H, W) ``shape``; non-zero = foreground.

    Raises:
        UserError: unreadable, not 2-D, or an aspect ratio unlike the slide's (it must cover the whole slide).
    """
    path = Path(path)
    array = read_label(path) if path.suffix.lower() == ".npy" else read_image(path, allow_grey=True)
    array = np.asarray(array)
    if array.ndim == 3:
        array = array.max(axis=2)
    if array.ndim != 2 or min(array.shape) < 1:
        raise UserError(f"{path}: mask of shape {array.shape} is not an (H, W) image")
    slide_ratio, mask_ratio = shape[1] / shape[0], array.shape[1] / array.shape[0]
    if abs(mask_ratio / slide_ratio - 1) > ASPECT_TOLERANCE:
        raise UserError(f"{path}: the mask is {array.shape[1]}x{array.shape[0]} px, the slide {shape[1]}x{shape[0]}; "
                        "a mask must cover the whole slide (the same aspect ratio)")
    return array > 0


def sample_mask(mask: np.ndarray, shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A whole-slide (h, w) mask looked up at level-0 points (every ``rows[i]``, ``cols[j]``) of a
    slide of level-0 (H, W) ``shape``: mask pixel (r, c) covers level-0 [r H / h, (r + 1) H / h) x ...

    Returns:
        (len(rows), len(cols)) of ``mask``'s dtype.
    """
    r = np.clip((rows * mask.shape[0] / shape[0]).astype(np.int64), 0, mask.shape[0] - 1)
    c = np.clip((cols * mask.shape[1] / shape[1]).astype(np.int64), 0, mask.shape[1] - 1)
    return mask[r[:, None], c[None, :]]


def tumour_fraction(grid: PatchGrid, annotation: str | os.PathLike, points: int = 8,
                    classes: Sequence[str] = TUMOUR_CLASSES) -> np.ndarray:
    """(grid.rows, grid.cols) float32 tumour fraction per patch from a GeoJSON (``.geojson``/``.json``)
    or a mask image (any other suffix: PNG, TIFF, ``.npy``)."""
    rows, cols = grid.sample_points(points)
    if Path(annotation).suffix.lower() in (".geojson", ".json"):
        inside = rasterise_at(tumour_polygons(annotation, grid.shape, classes), rows, cols)
    else:
        inside = sample_mask(read_mask_image(annotation, grid.shape), grid.shape, rows, cols)
    return _per_patch(inside, points)


def tissue_fraction(grid: PatchGrid, tissue: np.ndarray, points: int = 8) -> np.ndarray:
    """(grid.rows, grid.cols) float32 tissue fraction per patch from a whole-slide (h, w) bool tissue mask."""
    rows, cols = grid.sample_points(points)
    return _per_patch(sample_mask(tissue, grid.shape, rows, cols), points)


@dataclass
class PatchTable:
    """Candidate patches over a set of slides, N rows.

    Attributes:
        slide, row, col: (N,) int64 slide index and patch position on its :class:`PatchGrid`.
        label: (N,) int64, 1 = tumour, 0 = non-tumour.
        tumour: (N,) float32 tumour fraction.
    """

    slide: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    col: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    label: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    tumour: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.slide)

    @classmethod
    def from_fractions(cls, index: int, tumour: np.ndarray, tissue: np.ndarray, min_tissue: float,
                       label_threshold: float) -> "PatchTable":
        """The patches of slide ``index`` with at least ``min_tissue`` tissue, labelled tumour when
        their tumour fraction is at least ``label_threshold``."""
        row, col = np.nonzero(tissue >= min_tissue)
        fraction = tumour[row, col]
        return cls(np.full(len(row), index, np.int64), row.astype(np.int64), col.astype(np.int64),
                   (fraction >= label_threshold).astype(np.int64), fraction.astype(np.float32))

    @classmethod
    def concatenate(cls, tables: Sequence["PatchTable"]) -> "PatchTable":
        """One table of all rows, in order."""
        if not tables:
            return cls()
        return cls(*(np.concatenate([getattr(t, name) for t in tables]) for name in ("slide", "row", "col", "label", "tumour")))


class DetectPatches(Dataset):
    """Patches read on the fly for the detection stage.

    Args:
        slides: the slides (indexed by ``table.slide``).
        table: the patches.
        mpp, size: the patch grid's resolution and side (px).
        augment: the patch augmentations (rotations, flips, colour; see :mod:`models.h2gnet.augment`), or None.
        seed: augmentation seed; sample i of epoch e uses ``(seed, e, i)``.

    A sample is ``{'image': (3, size, size) float32 RGB 0-255, 'label': int64, 'cluster': int64}``
    (``cluster`` from :attr:`clusters`, set by the sampler's k-means; 0 until then).
    """

    def __init__(self, slides: Sequence[SlideLike], table: PatchTable, mpp: float, size: int,
                 augment: Augment | None = None, seed: int = 0) -> None:
        self.slides, self.table, self.mpp, self.size = list(slides), table, float(mpp), int(size)
        self.augment, self.seed, self.epoch = augment, int(seed), 0
        self.clusters = np.zeros(len(table), np.int64)
        self._views: dict[int, SlideViewLike] = {}

    def __len__(self) -> int:
        return len(self.table)

    def set_epoch(self, epoch: int) -> None:
        """Draw augmentations of epoch ``epoch``."""
        self.epoch = int(epoch)

    def view(self, index: int) -> SlideViewLike:
        """The view of slide ``index`` at the patch resolution, opened once."""
        if index not in self._views:
            self._views[index] = self.slides[index].view(self.mpp)
        return self._views[index]

    def patch(self, i: int) -> np.ndarray:
        """(size, size, 3) uint8 RGB of patch ``i``, not augmented."""
        view = self.view(int(self.table.slide[i]))
        return view.read(int(self.table.col[i]) * self.size, int(self.table.row[i]) * self.size, self.size, self.size)[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self.patch(i)
        if self.augment is not None:
            image = augment_patch(image, np.random.default_rng([self.seed, self.epoch, int(i)]), self.augment)
        chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        return {"image": chw, "label": torch.tensor(int(self.table.label[i])), "cluster": torch.tensor(int(self.clusters[i]))}


@dataclass(frozen=True)
class PatchSettings:
    """How a slide's detection patches are found and labelled (``data.detect`` in ``opt/h2gnet.yaml``).

    Attributes:
        mpp: µm per pixel of the patches (1.0 ~ the paper's ×10).
        size: patch side in pixels.
        points: sample points per patch side for the tumour and tissue fractions.
        min_tissue: patches with a smaller tissue fraction are left out.
        label_threshold: tumour fraction from which a patch is tumour.
        tumour_classes: GeoJSON classes that mark tumour.
    """

    mpp: float = 1.0
    size: int = 256
    points: int = 8
    min_tissue: float = 0.25
    label_threshold: float = 0.5
    tumour_classes: tuple[str, ...] = TUMOUR_CLASSES


def label_slide(index: int, slide: SlideLike, annotation: str | os.PathLike, tissue: np.ndarray,
                settings: PatchSettings = PatchSettings()) -> PatchTable:
    """The labelled tissue patches of one slide.

    Args:
        index: the slide's index in the training set (``PatchTable.slide``).
        annotation: QuPath GeoJSON or a whole-slide mask image of the tumour.
        tissue: (h, w) bool tissue mask covering the whole slide.
    """
    grid = PatchGrid.for_slide(slide, settings.mpp, settings.size)
    tumour = tumour_fraction(grid, annotation, settings.points, settings.tumour_classes)
    return PatchTable.from_fractions(index, tumour, tissue_fraction(grid, tissue, settings.points),
                                     settings.min_tissue, settings.label_threshold)
