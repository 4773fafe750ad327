"""The H2G-Net cascade on one slide: tissue -> patch-wise tumour heatmap -> refined tumour mask.

1. Tissue (:func:`models.h2gnet.tissue.slide_tissue`) at ``tissue_mpp``.
2. Detection: every patch of the slide's non-overlapping grid (``patch_size`` px at
   ``patch_mpp``) with at least ``min_tissue`` tissue is classified by the MobileNetV2; its
   tumour probability is one heatmap value (0 for patches not run).
3. Refinement: the slide's thumbnail (RGB 0-1) and the heatmap are placed on the
   ``grid x grid`` refinement grid (aspect ratio kept by padding, heatmap by nearest
   neighbours, see :mod:`models.h2gnet.grid`) and the U-Net's tumour probability there gives
   the refined mask (probability >= ``threshold``).

Scores (:func:`score_on_grid`) follow the paper: DSC, precision and recall per slide on the
refinement grid, for the patch-wise heatmap thresholded at ``threshold`` and for the refined mask.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from metrics.region import region_scores
from misc.errors import UserError
from models.h2gnet.grid import Placement, from_grid, to_grid
from models.h2gnet.patches import TUMOUR_CLASSES, PatchGrid, rasterise_at, read_mask_image, sample_mask, tissue_fraction, tumour_polygons
from models.h2gnet.slides import SlideLike, level0_shape, pyramid_mpp, read_whole
from models.h2gnet.tissue import slide_tissue
from models.h2gnet.unet import RefineUNet

TUMOUR_CHANNEL = 1


@dataclass(frozen=True)
class CascadeSettings:
    """Resolutions and sizes of the cascade (``infer`` and ``data`` in ``opt/h2gnet.yaml``).

    Attributes:
        patch_mpp: µm per pixel of the detection patches.
        patch_size: detection patch side, px.
        min_tissue: tissue fraction from which a patch is classified.
        tissue_mpp: µm per pixel of the tissue mask.
        grid: side of the refinement grid, px.
        batch_size: detection patches per forward pass.
        threshold: tumour probability from which a pixel (or patch) is tumour.
    """

    patch_mpp: float = 1.0
    patch_size: int = 256
    min_tissue: float = 0.25
    tissue_mpp: float = 16.0
    grid: int = 1024
    batch_size: int = 32
    threshold: float = 0.5


@dataclass
class CascadeResult:
    """What the cascade found on one slide.

    Attributes:
        heatmap: (rows, cols) float32 tumour probability per detection patch (0 where not run).
        step0: level-0 pixels per heatmap cell.
        tissue: (h, w) bool tissue mask covering the slide.
        placement: where the slide lies on the refinement grid (content ``[0, rows) x [0, cols)``).
        thumbnail: (grid, grid, 3) float32 RGB 0-1, the refinement input (white padding).
        heatmap_grid: (grid, grid) float32, the heatmap on the refinement grid (0 padding).
        refined: (grid, grid) float32 tumour probability of the refinement network.
        threshold: see :class:`CascadeSettings`.
        seconds: wall seconds per stage (``tissue``, ``detect``, ``refine``).
    """

    heatmap: np.ndarray
    step0: float
    tissue: np.ndarray
    placement: Placement
    thumbnail: np.ndarray
    heatmap_grid: np.ndarray
    refined: np.ndarray
    threshold: float
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def patchwise_mask(self) -> np.ndarray:
        """(rows, cols) bool of the grid content: the heatmap thresholded (the detection stage alone)."""
        return self.heatmap_grid[: self.placement.rows, : self.placement.cols] >= self.threshold

    @property
    def refined_mask(self) -> np.ndarray:
        """(rows, cols) bool of the grid content: the refined tumour mask."""
        return self.refined[: self.placement.rows, : self.placement.cols] >= self.threshold

    def mask_at(self, shape: tuple[int, int]) -> np.ndarray:
        """The refined mask resized (nearest) to ``shape`` = (H, W), e.g. a pyramid level of the slide."""
        return from_grid(self.refined >= self.threshold, self.placement, shape)

    def summary(self, slide: SlideLike) -> dict[str, float | dict[str, float]]:
        """Areas in mm² (refined and patch-wise tumour, tissue) and the seconds per stage.

        Areas count mask pixels times their level-0 area: a grid pixel covers
        (H / rows) x (W / cols) level-0 pixels, a tissue-mask pixel (H / h) x (W / w).
        """
        height, width = level0_shape(slide)
        um2 = slide.mpp**2
        grid_pixel = height / self.placement.rows * width / self.placement.cols * um2 / 1e6
        tissue_pixel = height / self.tissue.shape[0] * width / self.tissue.shape[1] * um2 / 1e6
        return {"tumour_area_mm2": float(self.refined_mask.sum() * grid_pixel),
                "patchwise_tumour_area_mm2": float(self.patchwise_mask.sum() * grid_pixel),
                "tissue_area_mm2": float(self.tissue.sum() * tissue_pixel),
                "seconds": dict(self.seconds)}


def grid_points(shape: tuple[int, int], placement: Placement) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 (row, col) centres of the refinement grid's content pixels for a slide of level-0 (H, W) ``shape``."""
    return ((np.arange(placement.rows) + 0.5) * shape[0] / placement.rows,
            (np.arange(placement.cols) + 0.5) * shape[1] / placement.cols)


def heatmap_on_grid(heatmap: np.ndarray, step0: float, shape: tuple[int, int], grid: int) -> tuple[np.ndarray, Placement]:
    """The heatmap on the refinement grid by nearest neighbours at the grid pixels' level-0 centres.

    Args:
        heatmap: (rows, cols) float per-patch values; cell (i, j) covers level-0
            [i step0, (i + 1) step0) x [j step0, (j + 1) step0); beyond it (the slide's remainder) is 0.
        shape: the slide's level-0 (H, W).

    Returns:
        ``((grid, grid) float32, placement)``.
    """
    placement = Placement.fit(shape, grid)
    rows, cols = grid_points(shape, placement)
    r, c = (rows // step0).astype(np.int64), (cols // step0).astype(np.int64)
    padded = np.pad(heatmap.astype(np.float32), ((0, 1), (0, 1)))  # the last row/column: beyond the heatmap
    values = padded[np.minimum(r, heatmap.shape[0])[:, None], np.minimum(c, heatmap.shape[1])[None, :]]
    out = np.zeros((grid, grid), np.float32)
    out[: placement.rows, : placement.cols] = values
    return out, placement


def thumbnail_on_grid(slide: SlideLike, grid: int) -> tuple[np.ndarray, Placement]:
    """The whole slide as (grid, grid, 3) float32 RGB 0-1 on the refinement grid (white padding),
    read from the pyramid level just finer than the grid and area-averaged."""
    height, width = level0_shape(slide)
    wanted = max(height, width) * slide.mpp / grid
    image = read_whole(slide.view(pyramid_mpp(slide, wanted)))
    rgb, placement = to_grid(image.astype(np.float32) / 255.0, grid, pad_value=1.0)
    return rgb, placement


def truth_on_grid(annotation: str | os.PathLike, shape: tuple[int, int], placement: Placement,
                  classes: Sequence[str] = TUMOUR_CLASSES) -> np.ndarray:
    """(rows, cols) bool true tumour at the refinement grid's content pixels, from a QuPath
    GeoJSON or a whole-slide mask image of a slide of level-0 (H, W) ``shape``."""
    rows, cols = grid_points(shape, placement)
    if str(annotation).lower().endswith((".geojson", ".json")):
        return rasterise_at(tumour_polygons(annotation, shape, classes), rows, cols)
    return sample_mask(read_mask_image(annotation, shape), shape, rows, cols)


def _batches(items: np.ndarray, size: int) -> list[np.ndarray]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@torch.no_grad()
def detect_heatmap(detector: nn.Module, slide: SlideLike, tissue: np.ndarray, settings: CascadeSettings,
                   device: str | torch.device = "cpu") -> tuple[np.ndarray, float]:
    """The patch-wise tumour heatmap of a slide.

    Args:
        detector: the MobileNetV2 ((N, 3, P, P) float RGB 0-255 -> (N, 2) logits), in eval mode.
        tissue: (h, w) bool tissue mask covering the slide.

    Returns:
        ``(heatmap, step0)``: (rows, cols) float32 tumour probability (0 where no patch ran) and
        the level-0 pixels per cell.
    """
    grid = PatchGrid.for_slide(slide, settings.patch_mpp, settings.patch_size)
    heatmap = np.zeros((grid.rows, grid.cols), np.float32)
    positions = np.argwhere(tissue_fraction(grid, tissue) >= settings.min_tissue)
    view, size = slide.view(settings.patch_mpp), settings.patch_size
    for chunk in _batches(positions, settings.batch_size):
        patches = np.stack([view.read(int(c) * size, int(r) * size, size, size)[0] for r, c in chunk])
        images = torch.from_numpy(patches.transpose(0, 3, 1, 2).copy()).float().to(device)
        probs = detector(images).float().softmax(dim=1)[:, TUMOUR_CHANNEL]
        heatmap[chunk[:, 0], chunk[:, 1]] = probs.cpu().numpy()
    return heatmap, grid.step0


def refinement_input(thumbnail: np.ndarray, heatmap_grid: np.ndarray) -> torch.Tensor:
    """(1, 4, S, S) float32: thumbnail RGB 0-1 (S, S, 3) and heatmap (S, S) stacked as channels."""
    if thumbnail.shape[:2] != heatmap_grid.shape:
        raise UserError(f"thumbnail {thumbnail.shape} and heatmap {heatmap_grid.shape} are not on one grid")
    stacked = np.concatenate([thumbnail, heatmap_grid[..., None]], axis=2).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(stacked, dtype=np.float32))[None]


@torch.no_grad()
def refine(refiner: RefineUNet, thumbnail: np.ndarray, heatmap_grid: np.ndarray,
           device: str | torch.device = "cpu") -> np.ndarray:
    """(S, S) float32 tumour probability of the refinement U-Net (in eval mode) on the grid."""
    logits = refiner(refinement_input(thumbnail, heatmap_grid).to(device))
    return RefineUNet.probabilities(logits)[0, TUMOUR_CHANNEL].cpu().numpy()


def run_cascade(detector: nn.Module, refiner: RefineUNet, slide: SlideLike, settings: CascadeSettings = CascadeSettings(),
                device: str | torch.device = "cpu", tissue: np.ndarray | None = None) -> CascadeResult:
    """Both stages on one slide (networks in eval mode).

    Args:
        tissue: a (h, w) bool tissue mask covering the slide; None computes it.
    """
    seconds = {}
    start = time.perf_counter()
    if tissue is None:
        tissue = slide_tissue(slide, settings.tissue_mpp)
    seconds["tissue"] = time.perf_counter() - start
    start = time.perf_counter()
    heatmap, step0 = detect_heatmap(detector, slide, tissue, settings, device)
    seconds["detect"] = time.perf_counter() - start
    start = time.perf_counter()
    thumbnail, placement = thumbnail_on_grid(slide, settings.grid)
    heat_grid, _ = heatmap_on_grid(heatmap, step0, level0_shape(slide), settings.grid)
    refined = refine(refiner, thumbnail, heat_grid, device)
    seconds["refine"] = time.perf_counter() - start
    return CascadeResult(heatmap, step0, tissue, placement, thumbnail, heat_grid, refined, settings.threshold, seconds)


def score_on_grid(result: CascadeResult, truth: np.ndarray) -> dict[str, dict[str, float]]:
    """Per-slide DSC, precision and recall on the refinement grid.

    Args:
        truth: (rows, cols) bool true tumour on the grid's content (see :func:`truth_on_grid`).

    Returns:
        ``{'patchwise': {...}, 'refined': {...}}`` (:func:`metrics.region.region_scores`).
    """
    return {"patchwise": region_scores(truth, result.patchwise_mask), "refined": region_scores(truth, result.refined_mask)}
