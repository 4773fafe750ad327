"""The cascade on a synthetic slide with stand-in networks whose answers are known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from loader.synthetic_tumour import TumourSlide, mask_geojson
from misc.errors import UserError
from models.h2gnet.cascade import (
    CascadeSettings,
    grid_points,
    heatmap_on_grid,
    refinement_input,
    run_cascade,
    score_on_grid,
    truth_on_grid,
)
from models.h2gnet.grid import Placement
from models.h2gnet.unet import RefineUNet

SHAPE = (1024, 1536)
SETTINGS = CascadeSettings(patch_mpp=2.0, patch_size=32, tissue_mpp=16.0, grid=64, batch_size=16)


class DarknessDetector(nn.Module):
    """Tumour logit rises as the patch darkens (synthetic tumour is crowded with dark nuclei)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grey = images.mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(grey), (198.0 - grey) / 2.0], dim=1)


class HeatmapEcho(nn.Module):
    """A 'refiner' whose tumour logit is the heatmap channel's: refined mask = patch-wise mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heat = x[:, 3:4]
        return torch.cat([torch.zeros_like(heat), 20 * (heat - 0.5)], dim=1)


@pytest.fixture(scope="module")
def slide() -> TumourSlide:
    return TumourSlide(21, SHAPE)


def test_heatmap_on_grid_is_nearest_and_zero_beyond():
    heat = np.array([[0.1, 0.9], [0.4, 0.6]], np.float32)
    grid, placement = heatmap_on_grid(heat, 10.0, (25, 25), 5)       # the slide's last 5 px have no patch
    assert placement == Placement(5, 5, 5)
    assert np.allclose(grid, [[0.1, 0.1, 0.9, 0.9, 0], [0.1, 0.1, 0.9, 0.9, 0], [0.4, 0.4, 0.6, 0.6, 0],
                              [0.4, 0.4, 0.6, 0.6, 0], [0, 0, 0, 0, 0]])
    wide, placement = heatmap_on_grid(heat, 10.0, (20, 40), 8)
    assert (placement.rows, placement.cols) == (4, 8) and not wide[4:].any()


def test_cascade_with_known_networks(slide, tmp_path):
    result = run_cascade(DarknessDetector(), HeatmapEcho(), slide, SETTINGS)
    assert result.heatmap.shape == (16, 24) and result.step0 == 64.0
    assert result.thumbnail.shape == (64, 64, 3) and np.allclose(result.thumbnail[43:], 1.0)   # white padding
    assert (result.placement.rows, result.placement.cols) == (43, 64)
    assert set(result.seconds) == {"tissue", "detect", "refine"}
    exact = slide.masks_at(*grid_points(SHAPE, result.placement))[1]
    annotation = tmp_path / "a.geojson"
    annotation.write_text(json.dumps(mask_geojson(slide.masks(4)[1], 4)))
    truth = truth_on_grid(annotation, SHAPE, result.placement)
    assert (truth == exact).mean() > 0.99
    scores = score_on_grid(result, exact)
    assert scores["patchwise"]["dsc"] > 0.8
    assert scores["refined"] == scores["patchwise"]          # the echo refiner changes nothing
    summary = result.summary(slide)
    tissue, tumour = slide.masks(16)
    assert summary["tissue_area_mm2"] == pytest.approx(result.tissue.sum() * 256 / 1e6)   # 16 x 16 µm pixels
    assert summary["tissue_area_mm2"] == pytest.approx(tissue.sum() * 256 / 1e6, rel=0.05)   # closing adds a rim
    assert summary["tumour_area_mm2"] == pytest.approx(tumour.sum() * 256 / 1e6, rel=0.25)
    assert summary["tumour_area_mm2"] == summary["patchwise_tumour_area_mm2"]
    full = result.mask_at(SHAPE)
    assert full.shape == SHAPE and (full == slide.masks(1)[1]).mean() > 0.9


def test_untrained_unet_runs_on_the_grid(slide):
    torch.manual_seed(0)
    refiner = RefineUNet([4, 8, 8, 8]).eval()
    result = run_cascade(DarknessDetector(), refiner, slide, SETTINGS, tissue=slide.masks(16)[0])
    assert result.refined.shape == (64, 64) and 0 <= result.refined.min() and result.refined.max() <= 1
    assert result.refined_mask.shape == (43, 64)


def test_refinement_input_channels():
    x = refinement_input(np.full((8, 8, 3), 0.5, np.float32), np.ones((8, 8), np.float32))
    assert x.shape == (1, 4, 8, 8) and float(x[0, 3].min()) == 1.0 and float(x[0, :3].max()) == 0.5
    with pytest.raises(UserError, match="one grid"):
        refinement_input(np.zeros((8, 8, 3), np.float32), np.zeros((4, 4), np.float32))
