"""Augmentations: known geometry on a square label, id preservation, no in-place changes, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from loader.augment import OPS, build_augment, load_augment_preset
from loader.colour import lab_statistics, macenko_stains
from misc.errors import UserError
from misc.io import read_image, write_image
from loader.synthetic import generate_tile

SIZE = 21
SQUARE_ID = 7
GEOMETRIC = ["flip", "rotate90", "transpose", "affine", "elastic", "elastic_gaussian", "crop", "resize"]
IMAGE_ONLY = sorted(set(OPS) - set(GEOMETRIC))


def square_sample() -> dict:
    """21 x 21 sample: instance 7 (type 2) on rows 2..5, columns 3..8; a gradient image."""
    inst_map = np.zeros((SIZE, SIZE), np.int32)
    inst_map[2:6, 3:9] = SQUARE_ID
    type_map = (inst_map > 0).astype(np.int32) * 2
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    image = np.stack([rows * 12, cols * 12, np.full_like(rows, 90)], axis=-1).astype(np.uint8)
    return {"image": image, "inst_map": inst_map, "type_map": type_map}


def square_box(inst_map: np.ndarray) -> tuple[int, int, int, int]:
    """(first row, last row, first column, last column) of the square."""
    rows, cols = np.nonzero(inst_map == SQUARE_ID)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def tile_sample(size: int = 64) -> dict:
    image, inst_map, type_map = generate_tile(3, (size, size))
    return {"image": image, "inst_map": inst_map, "type_map": type_map}


def run(spec, sample, seed=0, input_shape=None) -> dict:
    return build_augment(spec, input_shape=input_shape)(sample, np.random.default_rng(seed))


@pytest.mark.parametrize(
    ("spec", "box"),
    [
        ({"op": "flip", "axis": "horizontal"}, (2, 5, 12, 17)),
        ({"op": "flip", "axis": "vertical"}, (15, 18, 3, 8)),
        ({"op": "rotate90", "k": [1]}, (12, 17, 2, 5)),
        ({"op": "rotate90", "k": [2]}, (15, 18, 12, 17)),
        ({"op": "transpose"}, (3, 8, 2, 5)),
        ({"op": "affine", "scale": 1, "translate": 0, "shear": 0, "rotate": 90}, (12, 17, 2, 5)),
        ({"op": "affine", "scale": 1, "translate": [0.2, 0.2], "shear": 0, "rotate": 0}, (6, 9, 7, 12)),
        ({"op": "crop", "size": [17, 12], "position": "centre"}, (0, 3, 0, 4)),
        ({"op": "resize", "scale": 2}, (4, 11, 6, 17)),
        ({"op": "elastic", "sigma": 0}, (2, 5, 3, 8)),
    ],
)
def test_square_lands_where_expected(spec, box):
    out = run([spec], square_sample())
    assert square_box(out["inst_map"]) == box
    assert square_box(out["type_map"] * SQUARE_ID // 2) == box


def test_affine_rotation_by_90_degrees_equals_rot90_on_the_whole_map():
    sample = square_sample()
    out = run([{"op": "affine", "scale": 1, "translate": 0, "shear": 0, "rotate": 90}], sample)
    np.testing.assert_array_equal(out["inst_map"], np.rot90(sample["inst_map"]))


def test_affine_scale_half_shrinks_the_square_towards_the_centre():
    out = run([{"op": "affine", "scale": 0.5, "translate": 0, "shear": 0, "rotate": 0}], square_sample())
    # output pixel p samples input 2 * p - 10: rows 2..5 -> {6, 7}, columns 3..8 -> {7, 8, 9}
    assert square_box(out["inst_map"]) == (6, 7, 7, 9)


def test_random_crop_has_requested_size_and_keeps_a_window_of_the_input():
    sample = tile_sample()
    out = run([{"op": "crop", "size": [20, 30], "position": "random"}], sample, seed=5)
    assert out["image"].shape == (20, 30, 3) and out["inst_map"].shape == (20, 30)
    hits = [(r, c) for r in range(45) for c in range(35) if np.array_equal(sample["inst_map"][r:r + 20, c:c + 30], out["inst_map"])]
    assert any(np.array_equal(sample["image"][r:r + 20, c:c + 30], out["image"]) for r, c in hits)


def test_crop_larger_than_sample_pads_with_background():
    out = run([{"op": "crop", "size": [25, 21], "position": "centre"}], square_sample())
    assert out["inst_map"].shape == (25, 21)
    assert square_box(out["inst_map"]) == (4, 7, 3, 8)
    assert out["image"][:2].max() == 0


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_keeps_ids_a_subset_and_never_modifies_its_input(op):
    sample = tile_sample()
    before = {k: v.copy() for k, v in sample.items()}
    out = run([{"op": op, **({"size": [40, 40]} if op == "crop" else {})}], sample, seed=1)
    for key in sample:
        np.testing.assert_array_equal(sample[key], before[key])
        assert not np.shares_memory(out[key], sample[key])
    assert set(np.unique(out["inst_map"])) <= set(np.unique(sample["inst_map"]))
    assert out["image"].dtype == np.uint8 and out["inst_map"].dtype == np.int32
    assert out["image"].shape[:2] == out["inst_map"].shape == out["type_map"].shape


@pytest.mark.parametrize("op", IMAGE_ONLY)
def test_image_only_ops_leave_label_maps_unchanged(op):
    sample = tile_sample()
    out = run([{"op": op}], sample, seed=2)
    np.testing.assert_array_equal(out["inst_map"], sample["inst_map"])
    np.testing.assert_array_equal(out["type_map"], sample["type_map"])


def test_geometric_ops_move_extra_maps_with_the_labels():
    sample = square_sample()
    sample["weight_map"] = sample["inst_map"].astype(np.float32) / 2
    out = run([{"op": "flip", "axis": "horizontal"}], sample)
    np.testing.assert_array_equal(out["weight_map"], out["inst_map"].astype(np.float32) / 2)


@pytest.mark.parametrize("dtype", [bool, np.int64, np.uint32, np.float16])
def test_maps_of_any_dtype_move_exactly(dtype):
    sample = square_sample()
    sample["extra_map"] = (sample["inst_map"] * 1000).astype(dtype)
    out = run([{"op": "affine", "scale": 1, "translate": 0, "shear": 0, "rotate": 90}], sample)
    assert out["extra_map"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out["extra_map"], np.rot90(sample["extra_map"]))


def test_brightness_shift_adds_grey_levels_and_clips():
    sample = square_sample()
    out = run([{"op": "brightness", "shift": 40, "factor": 1}], sample)
    np.testing.assert_array_equal(out["image"], np.minimum(sample["image"].astype(int) + 40, 255))


@pytest.mark.parametrize(
    "spec",
    [
        {"op": "contrast", "factor": 1},
        {"op": "saturation", "factor": 1},
        {"op": "gaussian_noise", "sigma": 0},
        {"op": "gaussian_blur", "ksize": [1, 1]},
        {"op": "median_blur", "ksize": [1, 1]},
    ],
)
def test_neutral_parameters_give_the_same_image(spec):
    sample = tile_sample()
    np.testing.assert_array_equal(run([spec], sample)["image"], sample["image"])


@pytest.mark.parametrize("spec", [{"op": "hue", "degrees": 0}, {"op": "hed_jitter", "alpha": 1, "beta": 0}])
def test_neutral_colour_round_trips_within_one_grey_level(spec):
    sample = tile_sample()
    diff = np.abs(run([spec], sample)["image"].astype(int) - sample["image"].astype(int))
    assert diff.max() <= 1


def test_reinhard_matches_target_lab_statistics():
    target = {"mean": [60.0, 20.0, -10.0], "std": [15.0, 8.0, 6.0]}
    out = run([{"op": "reinhard", "target": target}], tile_sample(96))
    mean, std = lab_statistics(out["image"])
    np.testing.assert_allclose(mean, target["mean"], atol=1.5)
    np.testing.assert_allclose(std, target["std"], atol=1.5)


def test_macenko_gives_the_target_stain_vectors():
    from loader.augment import augment_config

    target = np.asarray(augment_config()["ops"]["macenko"]["target"]["stain_matrix"])
    out = run([{"op": "macenko"}], tile_sample(96))
    stains, _ = macenko_stains(out["image"], 240, 1, 0.15)
    cosine = (stains * target).sum(axis=0) / np.linalg.norm(target, axis=0)
    assert cosine.min() > 0.99  # the synthetic input's eosin vector is at cosine 0.92


def test_macenko_anchor_equals_the_anchor_stains_as_target(tmp_path):
    anchor = tile_sample(96)["image"]
    write_image(tmp_path / "anchor.png", anchor)
    stains, max_conc = macenko_stains(anchor, 240, 1, 0.15)
    image = generate_tile(11, (96, 96), stain_jitter=0.2)[0]
    by_anchor = run([{"op": "macenko", "anchor": str(tmp_path / "anchor.png")}], {"image": image})
    by_target = run([{"op": "macenko", "target": {"stain_matrix": stains.tolist(), "max_conc": max_conc.tolist()}}],
                    {"image": image})
    np.testing.assert_array_equal(by_anchor["image"], by_target["image"])
    assert not np.array_equal(by_anchor["image"], image)


def test_same_seed_same_result_and_other_seed_differs():
    spec = load_augment_preset("hovernet")
    sample = tile_sample(96)
    first, again, other = (run(spec, sample, seed, input_shape=(64, 64)) for seed in (4, 4, 5))
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["image"], other["image"])


@pytest.mark.parametrize(("name", "shape"), [("hovernet", (64, 64)), ("fullnet", (208, 208)), ("unet", (64, 64)), ("none", (300, 300))])
def test_published_presets_build_and_give_their_crop_size(name, shape):
    sample = tile_sample(300)
    out = run(load_augment_preset(name), sample, input_shape=(64, 64))
    assert out["image"].shape[:2] == shape


def test_one_of_and_random_order_compose_children():
    spec = [{"op": "one_of", "ops": [{"op": "flip", "axis": "horizontal"}, {"op": "flip", "axis": "vertical"}]}]
    boxes = {square_box(run(spec, square_sample(), seed)["inst_map"]) for seed in range(8)}
    assert boxes == {(2, 5, 12, 17), (15, 18, 3, 8)}


def test_probability_zero_skips_the_op():
    sample = square_sample()
    out = run([{"op": "flip", "axis": "horizontal", "p": 0}], sample)
    np.testing.assert_array_equal(out["inst_map"], sample["inst_map"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"op": "blurr"}, "unknown; choose one of"),
        ({"op": "affine", "rotation": [0, 1]}, r"unknown parameter\(s\) \['rotation'\]"),
        ({"op": "affine", "scale": [1.2, 0.8]}, "'scale' range"),
        ({"op": "gaussian_blur", "ksize": [2, 2]}, "no odd integer kernel size"),
        ({"op": "crop"}, "needs the network input shape"),
        ({"op": "flip", "p": 1.5}, "'p' range"),
        ({"op": "reinhard", "target": {"mean": [1, 2, 3]}}, "give 'anchor'"),
    ],
)
def test_bad_specs_name_the_op_and_key(spec, message):
    with pytest.raises(UserError, match=message):
        build_augment([spec])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UserError, match="choose one of .*hovernet"):
        load_augment_preset("hovernett")


def test_view_grid_has_one_row_per_sample_and_a_column_per_copy(tmp_path):
    from loader.extract import ExtractOptions, extract_samples
    from loader.view import main
    from types import SimpleNamespace

    image, inst_map, type_map = generate_tile(0, (64, 64))
    extract_samples([SimpleNamespace(name="t", image=image, inst_map=inst_map, type_map=type_map)], tmp_path / "p",
                    ExtractOptions(win=(48, 48), step=(32, 32)), progress=False)
    main([str(tmp_path / "p"), str(tmp_path / "grid.png"), "--preset", "hovernet", "--input-shape", "32", "32",
          "--samples", "2", "--repeats", "3", "--tile", "40"])
    assert read_image(tmp_path / "grid.png").shape == (2 * 44 - 4, 4 * 44 - 4, 3)


def test_resize_to_a_shorter_side_then_scale():
    sample = square_sample()
    sample = {key: value[:, :14] for key, value in sample.items()}  # 21 x 14
    out = run([{"op": "resize", "scale": 1, "shorter_side": 28}], sample)
    assert out["image"].shape[:2] == (42, 28) and out["inst_map"].shape == (42, 28)
    out = run([{"op": "resize", "scale": 0.5, "shorter_side": 28}], sample)
    assert out["image"].shape[:2] == (21, 14)


def test_resize_shorter_side_must_be_positive():
    with pytest.raises(UserError, match="shorter_side"):
        build_augment([{"op": "resize", "shorter_side": 0}])
