"""The refinement grid (aspect kept by padding, nearest for maps) and the refinement augmentations."""

from __future__ import annotations

import numpy as np
import pytest

from misc.errors import UserError
from models.h2gnet.augment import RefineAugment, augment_refine, shift_hsv
from models.h2gnet.grid import Placement, from_grid, to_grid


def test_placement_keeps_the_aspect_ratio():
    assert Placement.fit((500, 1000), 1024) == Placement(1024, 512, 1024)
    assert Placement.fit((3000, 1000), 64) == Placement(64, 64, 21)


def test_to_grid_pads_and_from_grid_restores_labels():
    mask = np.zeros((40, 80), np.int32)
    mask[10:30, 20:60] = 1
    grid, placement = to_grid(mask, 16, nearest=True)
    assert grid.shape == (16, 16) and grid.dtype == np.int32
    assert (placement.rows, placement.cols) == (8, 16)
    assert grid[8:].sum() == 0                      # padding
    assert set(np.unique(grid)) == {0, 1}           # nearest: no new values
    back = from_grid(grid, placement, (40, 80))
    assert back.shape == (40, 80) and (back == mask).mean() > 0.95
    rgb = np.full((40, 80, 3), 0.5, np.float32)
    grid_rgb, _ = to_grid(rgb, 16, pad_value=1.0)
    assert np.allclose(grid_rgb[:8], 0.5) and np.allclose(grid_rgb[8:], 1.0)
    with pytest.raises(UserError, match="refinement grid"):
        from_grid(grid[:8], placement, (40, 80))


def test_nearest_heatmap_keeps_its_values():
    heat = np.random.default_rng(0).choice([0.0, 0.25, 1.0], size=(7, 5)).astype(np.float32)
    grid, _ = to_grid(heat, 32, nearest=True)
    assert set(np.unique(grid)) <= {0.0, 0.25, 1.0}


def sample(size: int = 16):
    rng = np.random.default_rng(1)
    rgb = rng.uniform(0.2, 0.8, (size, size, 3)).astype(np.float32)
    heat = rng.uniform(0, 1, (size, size)).astype(np.float32)
    mask = (heat > 0.5).astype(np.int64)
    return rgb, heat, mask


def test_geometry_moves_all_three_alike_and_colour_touches_rgb_only():
    rgb, heat, mask = sample()
    settings = RefineAugment(p=1.0, hue=0.0, saturation=0.0, gamma=(1.0, 1.0), brightness=(1.0, 1.0))
    out_rgb, out_heat, out_mask = augment_refine(rgb, heat, mask, np.random.default_rng(5), settings)
    assert np.array_equal(out_mask, (out_heat > 0.5).astype(np.int64))   # the mask follows the heatmap
    assert np.allclose(np.sort(out_heat.ravel()), np.sort(heat.ravel()))
    # the RGB moved with them: its per-pixel link to the heatmap survives
    index = np.argmax(heat)
    assert np.allclose(out_rgb[out_heat == heat.ravel()[index]], rgb.reshape(-1, 3)[index], atol=1e-5)
    colour = RefineAugment(p=1.0, gamma=(2.0, 2.0), brightness=(1.0, 1.0), hue=0.0, saturation=0.0)
    rng = np.random.default_rng(0)
    out_rgb, out_heat, _ = augment_refine(rgb, heat, mask, rng, colour)
    assert out_rgb.dtype == np.float32 and 0 <= out_rgb.min() and out_rgb.max() <= 1


def test_hsv_shift_is_cyclic_and_gamma_range_checked():
    red = np.zeros((2, 2, 3), np.float32)
    red[..., 0] = 1.0
    assert np.allclose(shift_hsv(red, 60.0, 0.0), [0.0, 1.0, 0.0], atol=1e-5)       # red + 120 degrees = green
    assert np.allclose(shift_hsv(red, 180.0, 0.0), red, atol=1e-5)              # a full turn
    with pytest.raises(UserError, match="gamma"):
        RefineAugment(gamma=(1.5, 1.0))
    with pytest.raises(UserError, match="unknown"):
        RefineAugment.from_config({"hue": 5, "rotate": True})
