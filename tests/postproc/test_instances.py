"""Per-instance info: bbox, centroid, contour, majority type with HoVer-Net's background rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from misc.errors import UserError
from postproc.instances import instance_info, instance_type_map


def one_hot(type_map: np.ndarray, nr_types: int) -> np.ndarray:
    """(H, W) int types → (H, W, nr_types) float32 one-hot 'probabilities'."""
    return np.eye(nr_types, dtype=np.float32)[type_map]


def rectangle_map() -> np.ndarray:
    """5 × 6 map with one 2 × 3 instance (id 5) at rows 1-2, columns 2-4."""
    inst_map = np.zeros((5, 6), np.int32)
    inst_map[1:3, 2:5] = 5
    return inst_map


def test_bbox_is_rows_then_columns_with_exclusive_ends():
    assert instance_info(rectangle_map())[5]["bbox"] == [[1, 2], [3, 5]]


def test_centroid_is_x_then_y():
    assert instance_info(rectangle_map())[5]["centroid"] == [3.0, 1.5]


def test_contour_holds_the_rectangle_corners_as_x_y():
    contour = instance_info(rectangle_map())[5]["contour"]
    assert sorted(contour) == [[2, 1], [2, 2], [4, 1], [4, 2]]


def test_keys_are_the_original_non_contiguous_ids():
    inst_map = np.zeros((4, 8), np.int32)
    inst_map[0:2, 0:2] = 3
    inst_map[2:4, 5:8] = 7
    assert list(instance_info(inst_map)) == [3, 7]


def test_huge_ids_are_handled():
    inst_map = rectangle_map().astype(np.int64) * 10**9
    info = instance_info(inst_map)
    assert list(info) == [5 * 10**9] and info[5 * 10**9]["bbox"] == [[1, 2], [3, 5]]


def test_untyped_instances_have_no_type():
    entry = instance_info(rectangle_map())[5]
    assert entry["type"] is None and entry["type_prob"] is None


def test_majority_type_and_its_fraction():
    inst_map = np.ones((1, 5), np.int32)
    type_map = np.array([[2, 2, 2, 1, 1]])
    entry = instance_info(inst_map, one_hot(type_map, 3))[1]
    assert (entry["type"], entry["type_prob"]) == (2, 0.6)


def test_background_majority_takes_the_next_type():
    inst_map = np.ones((1, 5), np.int32)
    type_map = np.array([[0, 0, 0, 1, 1]])
    entry = instance_info(inst_map, one_hot(type_map, 3))[1]
    assert (entry["type"], entry["type_prob"]) == (1, 0.4)


def test_all_background_stays_background():
    inst_map = np.ones((1, 4), np.int32)
    entry = instance_info(inst_map, one_hot(np.zeros((1, 4), int), 3))[1]
    assert (entry["type"], entry["type_prob"]) == (0, 1.0)


def test_tie_goes_to_the_lower_type():
    inst_map = np.ones((1, 4), np.int32)
    type_map = np.array([[3, 1, 3, 1]])
    assert instance_info(inst_map, one_hot(type_map, 4))[1]["type"] == 1


def test_type_map_paints_each_instance_with_its_type():
    inst_map = np.array([[1, 1, 0, 2, 2]], np.int32)
    type_map = np.array([[2, 2, 0, 0, 3]])
    info = instance_info(inst_map, one_hot(type_map, 4))
    np.testing.assert_array_equal(instance_type_map(inst_map, info), [[2, 2, 0, 3, 3]])


def test_empty_map_gives_no_instances():
    assert instance_info(np.zeros((4, 4), np.int32)) == {}


def test_result_is_json_serialisable():
    inst_map = rectangle_map()
    info = instance_info(inst_map, one_hot(np.where(inst_map > 0, 1, 0), 2))
    assert json.loads(json.dumps(info))["5"]["type"] == 1


def test_type_prob_of_wrong_shape_is_a_user_error():
    with pytest.raises(UserError, match=r"type_prob must be \(H, W, T\)"):
        instance_info(rectangle_map(), np.zeros((5, 6), np.float32))
