"""Tests of FullNet weight maps against literal values and a brute-force distance transform."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from misc.errors import UserError
from models.fullnet.weights import object_boundaries, weight_map


def brute_force(inst_map: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """Per-object full-image distance transforms of the boundaries, two smallest per pixel."""
    boundary = object_boundaries(inst_map)
    ids = np.unique(inst_map[inst_map > 0])
    if ids.size < 2:
        return np.ones(inst_map.shape)
    dists = np.stack([ndimage.distance_transform_edt(boundary != i) for i in ids])
    dists.sort(axis=0)
    return 1.0 + w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma ** 2))


def random_map(seed: int, size: int = 80, count: int = 14) -> np.ndarray:
    """(size, size) int32 map of random discs, some touching, one cut by the image border."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    inst_map = np.zeros((size, size), np.int32)
    for label in range(1, count + 1):
        cy, cx = rng.uniform(0, size, 2)
        radius = rng.uniform(2, 7)
        inst_map[(rows - cy) ** 2 + (cols - cx) ** 2 <= radius ** 2] = label * 3
    inst_map[0:4, 0:6] = 99
    return inst_map


def test_boundaries_are_pixels_with_an_outside_8_neighbour() -> None:
    inst_map = np.zeros((5, 6), np.int32)
    inst_map[1:4, 0:3] = 1
    inst_map[1:4, 3:5] = 2
    expected = np.array([
        [0, 0, 0, 0, 0, 0],
        [1, 1, 1, 2, 2, 0],
        [1, 0, 1, 2, 2, 0],
        [1, 1, 1, 2, 2, 0],
        [0, 0, 0, 0, 0, 0],
    ])
    np.testing.assert_array_equal(object_boundaries(inst_map), expected)


def test_literal_weights_between_two_pixels() -> None:
    inst_map = np.array([[1, 0, 0, 2, 0]], np.int32)
    w = weight_map(inst_map, w0=10.0, sigma=5.0)
    expected = [1 + 10 * math.exp(-(0 + 3) ** 2 / 50), 1 + 10 * math.exp(-(1 + 2) ** 2 / 50),
                1 + 10 * math.exp(-(2 + 1) ** 2 / 50), 1 + 10 * math.exp(-(3 + 0) ** 2 / 50),
                1 + 10 * math.exp(-(1 + 4) ** 2 / 50)]
    np.testing.assert_allclose(w[0], expected, atol=1e-6)


@pytest.mark.parametrize(("seed", "sigma"), [(0, 5.0), (1, 5.0), (2, 20.0)])
def test_matches_brute_force_within_1e_6(seed: int, sigma: float) -> None:
    inst_map = random_map(seed)
    w = weight_map(inst_map, w0=10.0, sigma=sigma)
    assert w.dtype == np.float32
    assert np.abs(w - brute_force(inst_map, 10.0, sigma)).max() <= 1e-6


def test_fewer_than_two_objects_give_ones() -> None:
    inst_map = np.zeros((7, 7), np.int32)
    np.testing.assert_array_equal(weight_map(inst_map), np.ones((7, 7), np.float32))
    inst_map[2:5, 2:5] = 4
    np.testing.assert_array_equal(weight_map(inst_map), np.ones((7, 7), np.float32))


def test_sparse_large_ids_match_renumbered_ones() -> None:
    inst_map = random_map(3)
    sparse = np.where(inst_map > 0, inst_map * 1_000_003, 0).astype(np.int64)
    np.testing.assert_array_equal(weight_map(sparse), weight_map(inst_map))


def test_rejects_non_integer_maps() -> None:
    with pytest.raises(UserError, match="integers"):
        weight_map(np.zeros((4, 4), np.float32))
