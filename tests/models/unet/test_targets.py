"""U-Net targets: HoVer-Net's NP/HV maps on the whole window, one-hot types, type-count checks;
class-aware sampling weights."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from misc.errors import UserError
from loader.synthetic import generate_tile
from models.hovernet.targets import HoVerTargets
from models.unet.sampling import class_aware_weights, type_counts
from models.unet.targets import UNetTargets, one_hot_types


def test_one_hot_types():
    onehot = one_hot_types(np.array([[0, 2], [1, 2]]), 3)
    assert onehot.dtype == np.uint8 and onehot.shape == (3, 2, 2)
    assert onehot[:, 0, 1].tolist() == [0, 0, 1] and onehot[:, 1, 0].tolist() == [0, 1, 0]
    assert (onehot.sum(0) == 1).all()


def test_types_outside_the_configured_count_are_refused():
    with pytest.raises(UserError, match="nucleus type 5 but model.nr_types is 4.*set model.nr_types to 6"):
        one_hot_types(np.array([[0, 5]]), 4)


def test_builder_reuses_hovernet_maps_on_the_whole_window():
    image, inst_map, type_map = generate_tile(3, (80, 80))
    sample = {"image": image, "inst_map": inst_map, "type_map": type_map}
    builder = pickle.loads(pickle.dumps(UNetTargets(input_size=64, nr_types=4)))
    targets = builder(sample)
    assert {k: (v.shape, v.dtype) for k, v in targets.items()} == {
        "image": ((3, 64, 64), np.float32), "np_map": ((64, 64), np.int64),
        "hv_map": ((2, 64, 64), np.float32), "tp_onehot": ((4, 64, 64), np.uint8),
    }
    hover = HoVerTargets(input_size=64, output_size=64, typed=True)(sample)
    np.testing.assert_array_equal(targets["np_map"], hover["np_map"])
    np.testing.assert_array_equal(targets["hv_map"], hover["hv_map"])
    np.testing.assert_array_equal(targets["tp_onehot"].argmax(0), hover["tp_map"])


def test_builder_checks_the_whole_patch_and_needs_types():
    image, inst_map, type_map = generate_tile(3, (80, 80))
    type_map = type_map.copy()
    type_map[0, 0] = 7  # outside the centre window, still refused
    with pytest.raises(UserError, match="nucleus type 7"):
        UNetTargets(input_size=64, nr_types=4)({"image": image, "inst_map": inst_map, "type_map": type_map})
    with pytest.raises(UserError, match="no type_map"):
        UNetTargets(input_size=64, nr_types=4)({"image": image, "inst_map": inst_map, "type_map": None})


def test_type_counts_vote_per_nucleus():
    inst = np.array([[1, 1, 0, 2], [1, 1, 0, 2], [0, 0, 0, 0], [3, 0, 0, 0]])
    types = np.array([[2, 2, 0, 1], [2, 1, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]])  # nucleus 3 untyped: 0
    assert type_counts(inst, types, 4).tolist() == [1, 1, 0]
    assert type_counts(np.zeros((3, 3), np.int32), np.zeros((3, 3), np.int32), 4).tolist() == [0, 0, 0]


def test_repeat_factors_by_hand():
    # type 1 in 4 of 4 patches (f 1), type 2 in 1 of 4 (f 1/4), type 3 nowhere
    counts = np.array([[3, 0, 0], [1, 2, 0], [5, 0, 0], [2, 0, 0]])
    # t = 1: r_1 = max(1, sqrt(1)) = 1, r_2 = sqrt(4) = 2; patch factor = max over its types
    assert class_aware_weights(counts, threshold=1.0).tolist() == [1.0, 2.0, 1.0, 1.0]
    assert class_aware_weights(np.zeros((2, 3)), threshold=1.0).tolist() == [1.0, 1.0]
    with pytest.raises(UserError, match="positive repeat-factor threshold"):
        class_aware_weights(counts, threshold=0.0)


def test_types_off_untyped_sample_has_every_nucleus_of_type_1():
    image, inst_map, _ = generate_tile(3, (80, 80))
    builder = UNetTargets(input_size=64, nr_types=2)
    untyped = builder({"image": image, "inst_map": inst_map, "type_map": None})
    typed = builder({"image": image, "inst_map": inst_map, "type_map": (inst_map > 0).astype(np.int32)})
    assert untyped["tp_onehot"].shape == (2, 64, 64) and untyped["tp_onehot"][1].any()
    for key in ("np_map", "hv_map", "tp_onehot"):
        np.testing.assert_array_equal(untyped[key], typed[key])
