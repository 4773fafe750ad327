"""CHR-Net targets: groupings, 3x3-cross erosion, marker map, the target builder."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from misc.errors import UserError
from loader.synthetic import generate_tile
from models.chrnet.targets import (
    CHRNetTargets,
    erode_instances,
    grouping_lookup,
    grouping_lookups,
    marker_map,
)

CCRCC = [[[1, 2], [3], [4]], [[1], [2, 3], [4]]]


def test_ccrcc_groupings_as_lookup_tables():
    first, second = grouping_lookups(CCRCC, 5)
    assert first.tolist() == [0, 1, 1, 2, 3]  # bg, G1uG2, G1uG2, G3, Endo
    assert second.tolist() == [0, 1, 2, 2, 3]  # bg, G1, G2uG3, G2uG3, Endo


@pytest.mark.parametrize("grouping, message", [
    ([[1, 2], [4]], "misses class 3"),
    ([[1, 2], [2, 3], [4]], "puts class 2 in more than one group"),
    ([[1, 2], [3], [4, 5]], "holds class 5; classes are 1..4"),
    ([[1, 2, 3, 4], []], r"\[1\] must be a non-empty list"),
])
def test_grouping_that_does_not_cover_every_class_once_names_the_class(grouping, message):
    with pytest.raises(UserError, match=message):
        grouping_lookup(grouping, 5, "model.groupings[0]")


def test_two_groupings_are_required():
    with pytest.raises(UserError, match="two groupings"):
        grouping_lookups(CCRCC[:1], 5)


def test_erosion_by_a_cross_separates_touching_nuclei():
    inst = np.array([
        [0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 2, 2],
        [0, 1, 1, 1, 2, 2],
        [0, 1, 1, 1, 2, 2],
        [0, 0, 0, 0, 2, 2],
    ])
    assert erode_instances(inst).tolist() == [
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 2],
        [0, 0, 0, 0, 0, 2],  # the image edge does not erode (cv2.erode's border value)
        [0, 0, 0, 0, 0, 2],
    ]


def test_erosion_equals_the_published_per_instance_cv2_erode():
    _, inst, _ = generate_tile(3, (96, 96))
    kernel = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)
    expected = np.zeros(inst.shape, np.int32)
    for ident in np.unique(inst)[1:]:
        expected[cv2.erode((inst == ident).astype(np.uint8), kernel, iterations=1) > 0] = ident
    assert np.array_equal(erode_instances(inst), expected)


def test_marker_map_literal():
    inst = np.array([
        [0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 2, 0, 3],
        [0, 1, 1, 1, 2, 0, 0],
        [0, 1, 1, 1, 2, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
    ])
    # nucleus 1: distance 2 at its centre, 1 elsewhere (its neighbour 2 counts as outside);
    # nucleus 2 (a 1-px wide bar, all distances 1) and the 1-px nucleus 3 get 1
    assert np.allclose(marker_map(inst), [
        [0, 0, 0, 0, 0, 0, 0],
        [0, 0.1, 0.1, 0.1, 1, 0, 1],
        [0, 0.1, 1.0, 0.1, 1, 0, 0],
        [0, 0.1, 0.1, 0.1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
    ])
    assert marker_map(inst).dtype == np.float32


def test_marker_map_equals_the_per_nucleus_published_formula():
    _, inst, _ = generate_tile(5, (128, 128))
    expected = np.zeros(inst.shape)
    for ident in np.unique(inst)[1:]:
        mask = inst == ident
        dist = distance_transform_edt(mask)[mask]
        span = dist.max() - dist.min()
        expected[mask] = 0.9 * (dist - dist.min()) / span + 0.1 if span > 0 else 1.0
    assert np.abs(marker_map(inst) - expected).max() < 1e-6


def test_marker_map_of_an_empty_map_is_zero():
    assert not marker_map(np.zeros((4, 5), np.int32)).any()


def _builder(**kwargs) -> CHRNetTargets:
    lookups = tuple(tuple(int(v) for v in lut) for lut in grouping_lookups(CCRCC, 5))
    return CHRNetTargets(**{"input_size": 14, "output_size": 8, "nr_types": 5, "lookups": lookups, **kwargs})


def _sample() -> dict:
    inst = np.zeros((16, 16), np.int32)
    inst[3:8, 3:8] = 1
    inst[3:8, 8:12] = 2
    inst[9:14, 5:10] = 3
    types = np.select([inst == 1, inst == 2, inst == 3], [2, 3, 4], 0).astype(np.int32)
    image = np.full((16, 16, 3), 200, np.uint8)
    return {"image": image, "inst_map": inst, "type_map": types}


def test_target_builder_literal_sample():
    sample = _sample()
    targets = pickle.loads(pickle.dumps(_builder()))(sample)
    assert {k: (v.shape, v.dtype.name) for k, v in targets.items()} == {
        "image": ((3, 14, 14), "float32"), "np_map": ((8, 8), "int64"), "marker_map": ((8, 8), "float32"),
        "tp_map": ((8, 8), "int64"), "hrfe1_map": ((8, 8), "int64"), "hrfe2_map": ((8, 8), "int64"),
    }
    eroded = erode_instances(sample["inst_map"])[4:12, 4:12]
    assert np.array_equal(targets["np_map"], (eroded > 0).astype(np.int64))
    # types survive only inside the eroded nuclei: grade 2 (1), grade 3 (2), endothelial (3)
    assert np.array_equal(targets["tp_map"], np.select([eroded == 1, eroded == 2, eroded == 3], [2, 3, 4], 0))
    assert np.array_equal(targets["hrfe1_map"], np.select([eroded == 1, eroded == 2, eroded == 3], [1, 2, 3], 0))
    assert np.array_equal(targets["hrfe2_map"], np.select([eroded == 1, eroded == 2, eroded == 3], [2, 2, 3], 0))
    assert not targets["marker_map"][eroded == 0].any()
    assert np.array_equal(targets["marker_map"], np.where(eroded > 0, marker_map(sample["inst_map"])[4:12, 4:12], 0))


def test_a_supplied_marker_map_is_kept():
    sample = _sample()
    supplied = np.full((16, 16), 0.3, np.float32)
    assert np.array_equal(_builder().precompute({**sample, "marker_map": supplied})["marker_map"], supplied)


def test_precomputed_marker_is_used_after_augmentation():
    sample = _sample()
    builder = _builder()
    moved = {**sample, **builder.precompute(sample)}
    moved["marker_map"] = np.full((16, 16), 0.5, np.float32)  # as if augmented: the builder must not recompute
    targets = builder(moved)
    assert set(np.unique(targets["marker_map"])) == {0.0, 0.5}


def test_class_ids_beyond_the_configured_types_are_refused():
    sample = _sample()
    sample["type_map"] = np.where(sample["inst_map"] == 3, 7, sample["type_map"])
    with pytest.raises(UserError, match="class id 7 but model.nr_types is 5"):
        _builder()(sample)


def test_untyped_sample_is_refused():
    sample = _sample()
    del sample["type_map"]
    with pytest.raises(UserError, match="needs nucleus types"):
        _builder()(sample)


def test_types_off_untyped_sample_is_one_class():
    lookups = tuple(tuple(int(v) for v in lut) for lut in grouping_lookups([[[1]], [[1]]], 2))
    builder = _builder(nr_types=2, lookups=lookups)
    sample = _sample()
    typed = builder({**sample, "type_map": (sample["inst_map"] > 0).astype(np.int32)})
    del sample["type_map"]
    untyped = builder(sample)
    assert set(np.unique(untyped["tp_map"])) == {0, 1}
    for key in ("np_map", "marker_map", "tp_map", "hrfe1_map", "hrfe2_map"):
        np.testing.assert_array_equal(untyped[key], typed[key])
