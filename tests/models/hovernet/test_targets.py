"""HoVer-Net targets on analytic maps with hand-computed values."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from misc.errors import UserError
from models.hovernet.targets import HoVerTargets, hv_map, split_disconnected


def disc(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    """(H, W) bool disc: pixels with (r − cr)² + (c − cc)² <= radius²."""
    rows, cols = np.indices(shape)
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def two_disc_map() -> np.ndarray:
    """7 × 12 map: disc of radius 2 at (3, 3) (id 1) and of radius 1 at (3, 9) (id 2)."""
    inst_map = np.zeros((7, 12), np.int32)
    inst_map[disc(inst_map.shape, (3, 3), 2)] = 1
    inst_map[disc(inst_map.shape, (3, 9), 1)] = 2
    return inst_map


H = 0.5
EXPECTED_H = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, -H, 0, H, 0, 0, 0, 0, 0, 0, 0],
    [0, -1, -H, 0, H, 1, 0, 0, -1, 0, 1, 0],
    [0, 0, -H, 0, H, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
], np.float32)
EXPECTED_V = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, -1, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, -H, -H, -H, 0, 0, 0, 0, -1, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, H, H, H, 0, 0, 0, 0, 1, 0, 0],
    [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
], np.float32)


def test_horizontal_map_of_two_discs():
    np.testing.assert_array_equal(hv_map(two_disc_map())[0], EXPECTED_H)


def test_vertical_map_of_two_discs():
    np.testing.assert_array_equal(hv_map(two_disc_map())[1], EXPECTED_V)


def test_centre_is_rounded_half_up_and_each_side_scaled_separately():
    inst_map = np.zeros((2, 4), np.int32)
    inst_map[:, :] = 1  # centre of mass (row 0.5, col 1.5) → pixel (1, 2)
    hv = hv_map(inst_map)
    np.testing.assert_array_equal(hv[0], [[-1, -0.5, 0, 1], [-1, -0.5, 0, 1]])
    np.testing.assert_array_equal(hv[1], [[-1, -1, -1, -1], [0, 0, 0, 0]])


def test_pieces_sharing_an_id_become_separate_instances():
    inst_map = np.zeros((3, 7), np.int32)
    inst_map[1, 0:3] = 4
    inst_map[1, 4:7] = 4
    np.testing.assert_array_equal(split_disconnected(inst_map)[1], [1, 1, 1, 0, 2, 2, 2])


def test_duplicated_id_gets_offsets_to_each_piece_centre():
    inst_map = np.zeros((3, 7), np.int32)
    inst_map[1, 0:3] = 4
    inst_map[1, 4:7] = 4
    np.testing.assert_array_equal(hv_map(split_disconnected(inst_map))[0][1], [-1, 0, 1, 0, -1, 0, 1])


def patch_sample(size: int = 20) -> dict:
    """A size × size sample with a radius-3 disc at (6, 10), cut by the 8 × 8 output window."""
    inst_map = np.zeros((size, size), np.int32)
    inst_map[disc(inst_map.shape, (6, 10), 3)] = 1
    image = np.arange(size * size * 3, dtype=np.uint8).reshape(size, size, 3)
    return {"image": image, "inst_map": inst_map, "type_map": 2 * (inst_map > 0).astype(np.int32)}


def test_offsets_are_computed_before_the_centre_crop():
    targets = HoVerTargets(input_size=12, output_size=8, typed=False, hv_min_area=1)(patch_sample())
    full = hv_map(patch_sample()["inst_map"])[:, 6:14, 6:14]
    np.testing.assert_array_equal(targets["hv_map"], full)


def test_image_and_targets_are_centre_crops_of_their_windows():
    sample = patch_sample()
    targets = HoVerTargets(input_size=12, output_size=8, typed=True, hv_min_area=1)(sample)
    np.testing.assert_array_equal(targets["image"], np.moveaxis(sample["image"][4:16, 4:16], -1, 0))
    np.testing.assert_array_equal(targets["np_map"], sample["inst_map"][6:14, 6:14] > 0)
    np.testing.assert_array_equal(targets["tp_map"], sample["type_map"][6:14, 6:14])


def test_target_dtypes_and_shapes():
    targets = HoVerTargets(input_size=12, output_size=8, typed=True)(patch_sample())
    shapes = {key: (value.dtype.name, value.shape) for key, value in targets.items()}
    assert shapes == {
        "image": ("float32", (3, 12, 12)),
        "np_map": ("int64", (8, 8)),
        "hv_map": ("float32", (2, 8, 8)),
        "tp_map": ("int64", (8, 8)),
    }


def test_instances_small_inside_the_window_get_no_offsets():
    targets = HoVerTargets(input_size=12, output_size=8, hv_min_area=30)(patch_sample())
    assert targets["np_map"].sum() > 0 and not targets["hv_map"].any()


def test_target_builder_survives_pickling():
    builder = HoVerTargets(input_size=12, output_size=8, typed=True)
    assert pickle.loads(pickle.dumps(builder)) == builder


def test_patch_smaller_than_the_input_window_is_a_user_error():
    with pytest.raises(UserError, match="data.patch_size"):
        HoVerTargets(input_size=24, output_size=8)(patch_sample())


def test_precompute_is_empty_without_a_reinhard_target():
    assert HoVerTargets(input_size=20, output_size=12).precompute(patch_sample()) == {}


def test_precompute_normalises_the_whole_image_to_the_reinhard_target():
    from loader.colour import lab_statistics
    from loader.synthetic import generate_tile

    target = {"mean": [60.0, 10.0, -5.0], "std": [10.0, 5.0, 5.0]}
    sample = {**patch_sample(), "image": generate_tile(0, (20, 20))[0]}
    image = HoVerTargets(input_size=20, output_size=12, reinhard=target).precompute(sample)["image"]
    assert image.shape == (20, 20, 3) and image.dtype == np.uint8
    np.testing.assert_allclose(lab_statistics(image)[0], target["mean"], atol=1.5)
