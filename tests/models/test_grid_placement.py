"""Grid maps (one value per window) placed on the image by their geometry: the placement equals
what the tiler stitches for dense maps, for earlier stages' maps and for semantic outputs."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from inference.tiling import ArraySink, TileSpec, predict_tiled
from models.base import StageMaps, previous_at
from models.tasks import placed_class_map, task_kind, with_class_grid
from postproc.grid import cell_of_pixels, place_grid


def test_cells_follow_step_and_offset_not_the_image_size() -> None:
    # 100 px in 4 windows of 32 (the last one runs into the padding): cells change at 32, 64, 96,
    # where a plain resize of 4 cells to 100 px would change at 25, 50, 75
    cells = cell_of_pixels(100, 4, {"step": 32, "size": 32, "offset": 0})
    assert np.flatnonzero(np.diff(cells)).tolist() == [31, 63, 95]
    resized = cv2.resize(np.arange(4, dtype=np.float32)[None], (100, 1), interpolation=cv2.INTER_NEAREST)[0]
    assert not np.array_equal(cells, resized)


def test_overlapping_windows_cut_in_the_middle_of_the_overlap() -> None:
    # windows of 32 every 16 starting at -8: centres at 8, 24, 40, ...; cuts halfway between
    cells = cell_of_pixels(64, 4, {"step": 16, "size": 32, "offset": -8})
    assert np.flatnonzero(np.diff(cells)).tolist() == [15, 31, 47]


def _counting(kind: str):
    """A predictor giving each window its running number, as a vector or as a filled map."""
    counter = itertools.count()

    def predict(windows: np.ndarray) -> dict[str, np.ndarray]:
        numbers = np.array([next(counter) for _ in windows], np.float32)
        if kind == "vector":
            return {"n": numbers[:, None]}
        size = windows.shape[1] - 2 * MARGIN
        return {"n": np.broadcast_to(numbers[:, None, None, None], (len(windows), size, size, 1)).copy()}

    return predict


MARGIN = 8


@pytest.mark.parametrize("keep_margin, pad_mode", [(0, "reflect"), (4, "reflect"), (6, "zero")])
def test_placed_grid_equals_the_stitched_dense_map(keep_margin: int, pad_mode: str) -> None:
    image = np.zeros((100, 70, 3), np.uint8)
    spec = TileSpec(input_size=32 + 2 * MARGIN, output_size=32, keep_margin=keep_margin, pad_mode=pad_mode)
    grid, dense = ArraySink(100), ArraySink(100)
    predict_tiled(image, _counting("vector"), spec, grid, batch_size=3)
    predict_tiled(image, _counting("dense"), spec, dense, batch_size=3)
    assert grid.maps["n"].shape[:2] != (100, 70)
    placed = previous_at(StageMaps(grid.maps, grid.grids), (100, 70))["n"]
    np.testing.assert_array_equal(placed, dense.maps["n"][..., 0])


def test_previous_at_without_geometry_resizes() -> None:
    values = np.arange(4, dtype=np.float32).reshape(2, 2, 1)
    plain = previous_at({"heat": values}, (6, 6))["heat"]
    placed = previous_at(StageMaps({"heat": values}, {"heat": {"step": 4, "size": 4, "offset": 0}}), (6, 6))["heat"]
    assert plain[:, 3].tolist() == [1, 1, 1, 3, 3, 3]   # resized: the cells split the image in halves
    assert placed[:, 3].tolist() == [0, 0, 0, 0, 2, 2]  # placed: cell 0 covers rows 0-3, column 3


def test_semantic_class_map_per_window_is_placed_for_outputs_and_overlays() -> None:
    class_grid = np.array([[0, 1], [1, 0]], np.int32)
    maps = {"heat": np.zeros((2, 2, 1), np.float32), "dense": np.zeros((6, 6, 1), np.float32)}
    result = with_class_grid({"class_map": class_grid}, maps, {"heat": {"step": 4, "size": 4, "offset": 0}})
    placed = placed_class_map(result, (6, 6))
    np.testing.assert_array_equal(placed, place_grid(class_grid, result["class_grid"], (6, 6)))
    assert placed[:, 3].tolist() == [0, 0, 0, 0, 1, 1] and placed[4].tolist() == [1, 1, 1, 1, 0, 0]
    family = SimpleNamespace(class_info=lambda: {0: ("a", (0, 0, 0)), 1: ("b", (250, 250, 250))})
    overlay = task_kind("semantic").overlay(family, np.zeros((6, 6, 3), np.uint8), result)
    np.testing.assert_array_equal(overlay[..., 0] > 0, placed == 1)  # the overlay follows the placement
    dense_result = with_class_grid({"class_map": np.zeros((6, 6), np.int32)}, maps, {"heat": {"step": 4, "size": 4,
                                                                                               "offset": 0}})
    assert "class_grid" not in dense_result
