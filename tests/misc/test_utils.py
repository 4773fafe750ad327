"""Tests of misc.utils on small hand-made instance maps with literal expected values."""

from __future__ import annotations

import numpy as np

from misc.utils import bounding_boxes, centroids, contours, instance_ids, remap_label

# Instance 1: a 2x2 square; instance 9: a vertical pair at the right edge.
SQUARE_AND_PAIR = np.array(
    [
        [0, 0, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 1, 1, 0, 9],
        [0, 0, 0, 0, 9],
    ],
    dtype=np.int32,
)


def test_remap_label_makes_huge_non_contiguous_ids_contiguous():
    inst_map = np.array([[0, 2**40], [7, 7]], dtype=np.int64)
    remapped = remap_label(inst_map)
    assert remapped.dtype == np.int32
    np.testing.assert_array_equal(remapped, [[0, 2], [1, 1]])


def test_remap_label_accepts_float_ids():
    np.testing.assert_array_equal(remap_label(np.array([[0.0, 5.0], [2.0, 5.0]])), [[0, 2], [1, 2]])


def test_remap_label_without_background_starts_at_1():
    np.testing.assert_array_equal(remap_label(np.array([[4, 9], [9, 4]])), [[1, 2], [2, 1]])


def test_instance_ids_are_sorted_without_background():
    ids = instance_ids(np.array([[0, 5], [3, 5]]))
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, [3, 5])


def test_bounding_boxes_have_exclusive_ends():
    assert bounding_boxes(SQUARE_AND_PAIR) == {1: (1, 1, 3, 3), 9: (2, 4, 4, 5)}


def test_bounding_boxes_of_empty_map_is_empty():
    assert bounding_boxes(np.zeros((3, 3), dtype=np.int32)) == {}


def test_centroids_are_x_then_y():
    inst_map = np.array([[4, 4, 4], [4, 0, 0]], dtype=np.int32)
    assert centroids(inst_map) == {4: (0.75, 0.25)}


def test_centroids_of_square_and_pair():
    assert centroids(SQUARE_AND_PAIR) == {1: (1.5, 1.5), 9: (4.0, 2.5)}


def test_contours_trace_each_instance_in_image_coordinates():
    found = contours(SQUARE_AND_PAIR)
    np.testing.assert_array_equal(found[1], [[1, 1], [1, 2], [2, 2], [2, 1]])
    np.testing.assert_array_equal(found[9], [[4, 2], [4, 3]])
    assert found[1].dtype == np.int32


def test_contours_keep_the_largest_piece():
    inst_map = np.zeros((5, 6), dtype=np.int32)
    inst_map[0, 0] = 5
    inst_map[2:4, 3:6] = 5
    np.testing.assert_array_equal(contours(inst_map)[5], [[3, 2], [3, 3], [4, 3], [5, 3], [5, 2], [4, 2]])
