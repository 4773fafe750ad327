"""The refinement grid (aspect kept by padding, nearest for maps) and the refinement augmentations."""

from __future__ import annotations

import numpy as np
import pytest

from misc.errors import UserError
from models.h2gnet.augment import Augment, augment_patch, augment_refine, shift_colour
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


GEOMETRY_ONLY = Augment(rotate=True, flip=True, hsv=None, gamma=None, mult=None)


def test_geometry_moves_all_three_alike_and_covers_the_dihedral_group():
    rgb, heat, mask = sample()
    seen = set()
    for seed in range(40):
        out_rgb, out_heat, out_mask = augment_refine(rgb, heat, mask, np.random.default_rng(seed), GEOMETRY_ONLY)
        assert np.array_equal(out_mask, (out_heat > 0.5).astype(np.int64))    # the mask follows the heatmap
        index = np.argmax(heat)                                                  # so does the RGB, pixel by pixel
        assert np.array_equal(out_rgb[out_heat == heat.ravel()[index]][0], rgb.reshape(-1, 3)[index])
        seen.add(out_heat.tobytes())
    assert len(seen) == 8          # 4 rotations x (flip or not): the 8 dihedral transforms


def test_colour_operations_touch_the_rgb_only():
    rgb, heat, mask = sample()
    colour = Augment(rotate=False, flip=False, hsv=20.0, gamma=(0.8, 1.25), mult=(0.8, 1.2))
    out_rgb, out_heat, out_mask = augment_refine(rgb, heat, mask, np.random.default_rng(0), colour)
    assert np.array_equal(out_heat, heat) and np.array_equal(out_mask, mask)
    assert out_rgb.dtype == np.float32 and 0 <= out_rgb.min() and out_rgb.max() <= 1
    assert not np.allclose(out_rgb, rgb)


def test_hsv_gamma_and_mult_by_hand():
    red = np.zeros((2, 2, 3), np.float32)
    red[..., 0] = 1.0
    assert np.allclose(shift_colour(red, hue=60.0), [0.0, 1.0, 0.0], atol=1e-5)     # red + 120 degrees = green
    assert np.allclose(shift_colour(red, hue=180.0), red, atol=1e-5)                 # a full turn
    grey = np.full((1, 1, 3), 0.25, np.float32)
    assert np.allclose(shift_colour(grey, gamma=0.5), 0.5, atol=1e-6)                # value 0.25 ** 0.5
    assert np.allclose(shift_colour(grey, mult=2.0), 0.5, atol=1e-6)
    assert np.allclose(shift_colour(grey, mult=8.0), 1.0, atol=1e-6)                 # clipped
    pink = np.array([[[1.0, 0.5, 0.5]]], np.float32)                                 # saturation 0.5
    assert np.allclose(shift_colour(pink, saturation=-127.5), 1.0, atol=1e-5)        # saturation 0: white


def test_patch_augmentation_and_settings():
    patch = (np.arange(8 * 8 * 3) % 256).astype(np.uint8).reshape(8, 8, 3)
    out = augment_patch(patch, np.random.default_rng(3), GEOMETRY_ONLY)
    assert out.dtype == np.uint8 and sorted(out.ravel()) == sorted(patch.ravel())
    coloured = augment_patch(patch, np.random.default_rng(3), Augment())
    assert coloured.shape == patch.shape and coloured.dtype == np.uint8
    with pytest.raises(UserError, match="gamma"):
        Augment(gamma=(1.5, 1.0))
    with pytest.raises(UserError, match="unknown"):
        Augment.from_config({"hue": 5})
    assert Augment.from_config({"mult": [0.9, 1.1], "gamma": None}).mult == (0.9, 1.1)
