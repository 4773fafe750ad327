"""Tests of FullNet post-processing: argmax, small-object removal, labelling, growth."""

from __future__ import annotations

import numpy as np
import pytest

from misc.errors import UserError
from models.fullnet.postproc import instances_from_prob


def prob_from_classes(classes: np.ndarray) -> np.ndarray:
    """(H, W) classes -> (H, W, 3) one-hot float32 probabilities."""
    return np.eye(3, dtype=np.float32)[classes]


def test_instances_grow_back_by_the_radius() -> None:
    classes = np.zeros((9, 9), np.int64)
    classes[4, 4] = 1
    classes[3:6, 3:6][classes[3:6, 3:6] == 0] = 2
    inst_map = instances_from_prob(prob_from_classes(classes), min_area=1, radius=1)
    expected = np.zeros((9, 9), np.int32)
    expected[3:6, 4] = expected[4, 3:6] = 1
    np.testing.assert_array_equal(inst_map, expected)


def test_small_objects_are_removed_and_ids_are_consecutive() -> None:
    classes = np.zeros((12, 12), np.int64)
    classes[1:3, 1:3] = 1          # 4 px: removed with min_area 5
    classes[6:9, 6:9] = 1          # 9 px: kept
    classes[1:4, 8:11] = 1         # 9 px: kept
    inst_map = instances_from_prob(prob_from_classes(classes), min_area=5, radius=0)
    assert inst_map[1, 1] == 0
    assert sorted(np.unique(inst_map)) == [0, 1, 2]
    assert inst_map.dtype == np.int32


def test_diagonal_inside_pixels_form_one_instance() -> None:
    classes = np.zeros((6, 6), np.int64)
    classes[1, 1] = classes[2, 2] = 1
    inst_map = instances_from_prob(prob_from_classes(classes), min_area=1, radius=0)
    assert inst_map[1, 1] == inst_map[2, 2] == 1


def test_contour_pixels_separate_instances() -> None:
    classes = np.ones((5, 7), np.int64)
    classes[:, 3] = 2
    inst_map = instances_from_prob(prob_from_classes(classes), min_area=1, radius=0)
    assert inst_map[0, 0] != inst_map[0, 6] and inst_map[0, 3] == 0


def test_wrong_shape_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"\(H, W, 3\)"):
        instances_from_prob(np.zeros((5, 5, 2), np.float32))
