"""Tests of FullNet targets: eroded insides, ternary label encoding, instance ids, builder."""

from __future__ import annotations

import numpy as np
import pytest

from models.fullnet.targets import FullNetTargets, inside_instances, inside_mask, ternary_label

# Two touching instances; instance 1 touches the left image border.
INST_MAP = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 2, 2, 2, 2, 2, 0],
    [0, 0, 0, 2, 2, 2, 2, 2, 0],
    [0, 0, 0, 2, 2, 2, 2, 2, 0],
    [0, 0, 0, 2, 2, 2, 2, 2, 0],
    [0, 0, 0, 2, 2, 2, 2, 2, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0],
], dtype=np.int32)

# Each instance eroded by a 3x3 cross; the image border erodes nothing.
INSIDE = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 1, 1, 1, 0, 0],
    [0, 0, 0, 0, 1, 1, 1, 0, 0],
    [0, 0, 0, 0, 1, 1, 1, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0],
], dtype=np.uint8)

# radius 1: contour = dilation(inside, cross) & ~erosion(inside, disk(1)).
TERNARY_R1 = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, 0],
    [2, 2, 0, 0, 0, 0, 0, 0, 0],
    [2, 2, 2, 0, 0, 0, 0, 0, 0],
    [2, 2, 0, 0, 2, 2, 2, 0, 0],
    [0, 0, 0, 2, 2, 2, 2, 2, 0],
    [0, 0, 0, 2, 2, 1, 2, 2, 0],
    [0, 0, 0, 2, 2, 2, 2, 2, 0],
    [0, 0, 0, 0, 2, 2, 2, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0],
], dtype=np.uint8)


def test_inside_is_the_union_of_eroded_instances() -> None:
    np.testing.assert_array_equal(inside_mask(INST_MAP), INSIDE)


def test_ternary_label_radius_1() -> None:
    np.testing.assert_array_equal(ternary_label(INSIDE, 1), TERNARY_R1)


def test_ternary_label_radius_2_erodes_the_whole_3x3_inside() -> None:
    expected = TERNARY_R1.copy()
    expected[5, 5] = 2
    np.testing.assert_array_equal(ternary_label(INSIDE, 2), expected)


def test_ternary_label_radius_0_keeps_inside() -> None:
    label = ternary_label(INSIDE, 0)
    np.testing.assert_array_equal(label == 1, INSIDE == 1)
    assert label[3, 5] == 2 and label[0, 0] == 0


def test_instances_are_components_of_the_inside_class() -> None:
    label = np.zeros((6, 6), np.uint8)
    label[0:2, 0:2] = 1
    label[2, 2] = 1          # 8-connected to the first block
    label[4:6, 4:6] = 1
    label[3, 0] = 2
    ids = inside_instances(label)
    assert ids.dtype == np.int32
    assert ids[0, 0] == ids[2, 2] != ids[5, 5]
    assert ids.max() == 2 and ids[3, 0] == 0


def test_builder_outputs_and_dtypes() -> None:
    image = np.zeros((9, 9, 3), np.uint8)
    out = FullNetTargets(radius=1)({"image": image, "inst_map": INST_MAP})
    assert sorted(out) == ["image", "instances", "label", "weight_map"]
    np.testing.assert_array_equal(out["label"], TERNARY_R1.astype(np.int64))
    assert out["label"].dtype == np.int64 and out["weight_map"].dtype == np.float32
    assert out["instances"][5, 5] == 1 and out["instances"].max() == 1


def test_builder_uses_the_precomputed_inside_after_augmentation() -> None:
    builder = FullNetTargets(radius=1)
    sample = {"image": np.zeros((9, 9, 3), np.uint8), "inst_map": INST_MAP}
    moved = {key: np.fliplr(value) for key, value in {**sample, **builder.precompute(sample)}.items()}
    out = builder(moved)
    np.testing.assert_array_equal(out["label"], np.fliplr(TERNARY_R1))


def test_weight_map_switch_gives_ones() -> None:
    sample = {"image": np.zeros((9, 9, 3), np.uint8), "inst_map": INST_MAP}
    maps = FullNetTargets(use_weight_map=False).precompute(sample)
    assert np.all(maps["weight_map"] == 1)


def test_cache_key_names_the_options() -> None:
    assert FullNetTargets(sigma=20).cache_key != FullNetTargets(sigma=5).cache_key
    assert FullNetTargets(use_weight_map=False).cache_key != FullNetTargets().cache_key


def test_reinhard_replaces_the_image_before_augmentation() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(60, 200, size=(9, 9, 3), dtype=np.uint8)
    target = {"mean": [60.0, 10.0, -5.0], "std": [10.0, 5.0, 5.0]}
    maps = FullNetTargets(reinhard=target).precompute({"image": image, "inst_map": INST_MAP})
    assert maps["image"].shape == image.shape and maps["image"].dtype == np.uint8
    assert not np.array_equal(maps["image"], image)


def test_negative_radius_is_rejected() -> None:
    from misc.errors import UserError

    with pytest.raises(UserError, match="radius"):
        FullNetTargets(radius=-1)
