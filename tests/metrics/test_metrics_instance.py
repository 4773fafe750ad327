"""instance_stats, pq_per_class, pannuke_pq, conic_mpq_plus, conic_r2: literal cases, properties, oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import r2_score

from metrics import INSTANCE_KEYS, conic_mpq_plus, conic_r2, instance_stats, pannuke_pq, pq_per_class
from metrics.matching import hungarian_pairs
from metrics.overlap import overlap_table
from misc.errors import UserError
from tests.metrics.metrics_oracle import oracle_stats, random_instance_map


def two_object_maps() -> tuple[np.ndarray, np.ndarray]:
    """6x6 case worked by hand below.

    true: id 1 = rows 0-1 x cols 0-1 (4 px), id 2 = rows 3-5 x cols 3-5 (9 px).
    pred: id 5 = rows 0-1 x cols 0-2 (6 px), id 7 = rows 3-5 x cols 3-4 (6 px), id 9 = (5, 0) (1 px).
    """
    true = np.zeros((6, 6), np.int32)
    true[0:2, 0:2] = 1
    true[3:6, 3:6] = 2
    pred = np.zeros((6, 6), np.int32)
    pred[0:2, 0:3] = 5
    pred[3:6, 3:5] = 7
    pred[5, 0] = 9
    return true, pred


def test_hand_computed_two_objects():
    # pairs: (1,5) I=4 U=6 IoU 2/3; (2,7) I=6 U=9 IoU 2/3; pred 9 unmatched.
    stats = instance_stats(*two_object_maps())
    assert stats["dice"] == pytest.approx(2 * 10 / (13 + 13))
    assert stats["dice2"] == pytest.approx(2 * 10 / (10 + 15))
    assert stats["aji"] == pytest.approx(10 / (6 + 9 + 1))
    assert stats["aji_plus"] == pytest.approx(10 / (6 + 9 + 1))
    assert stats["dq"] == pytest.approx(2 / (2 + 0.5))
    assert stats["sq"] == pytest.approx(2 / 3)
    assert stats["pq"] == pytest.approx(0.8 * 2 / 3)


def test_aji_tie_goes_to_lowest_pred_id_and_pred_is_reused():
    tie_true = np.array([[1, 1, 1, 1, 0, 0]])
    tie_pred = np.array([[8, 8, 3, 3, 0, 0]])
    # equal IoU 2/4 with pred 3 (cols 2-3) and pred 8 (cols 0-1): lowest id 3 wins, 8 unpaired.
    assert instance_stats(tie_true, tie_pred)["aji"] == pytest.approx(2 / (4 + 2))
    reuse_true = np.array([[1, 1, 2, 2, 0, 0]])
    reuse_pred = np.array([[4, 4, 4, 4, 4, 4]])
    # both true instances pick pred 4 (I=2, U=6 each): AJI = 4 / 12; AJI+ uses it once: 2 / (6 + 2).
    stats = instance_stats(reuse_true, reuse_pred)
    assert stats["aji"] == pytest.approx(4 / 12)
    assert stats["aji_plus"] == pytest.approx(2 / 8)


def test_iou_exactly_half_is_not_a_match():
    true = np.array([[1, 1, 0, 0]])
    pred = np.array([[2, 0, 0, 0]])  # I=1, U=2: IoU 0.5
    stats = instance_stats(true, pred)
    assert (stats["dq"], stats["sq"], stats["pq"]) == (0.0, 0.0, 0.0)
    above = instance_stats(np.array([[1, 1, 1, 0]]), np.array([[2, 2, 0, 0]]))  # IoU 2/3
    assert above["dq"] == 1.0 and above["sq"] == pytest.approx(2 / 3)


def test_match_iou_below_half_uses_one_to_one_matching():
    true = np.array([[1, 1, 1, 2, 2, 2]])
    pred = np.array([[0, 5, 5, 5, 5, 0]])  # IoU 2/5 with each true instance
    stats = instance_stats(true, pred, match_iou=0.3)
    assert stats["dq"] == pytest.approx(1 / (1 + 0.5))  # one pair, one FN
    assert stats["sq"] == pytest.approx(0.4)


def test_both_empty_is_nan_and_one_empty_is_zero():
    empty = np.zeros((4, 4), np.int32)
    full = np.ones((4, 4), np.int32)
    assert all(math.isnan(v) for v in instance_stats(empty, empty).values())
    assert instance_stats(empty, full) == {k: 0.0 for k in INSTANCE_KEYS}
    assert instance_stats(full, empty) == {k: 0.0 for k in INSTANCE_KEYS}


def test_no_background_pixel():
    true = np.array([[1, 1, 2, 2]])
    pred = np.array([[3, 3, 3, 4]])
    # (1,3) I=2 U=3; (2,3) I=1 U=4; (2,4) I=1 U=2 (IoU 0.5, no PQ match)
    stats = instance_stats(true, pred)
    assert stats["dice"] == 1.0
    assert stats["dq"] == pytest.approx(1 / 2)
    assert stats["aji"] == pytest.approx((2 + 1) / (3 + 2))


def test_dice2_is_zero_when_nothing_overlaps():
    stats = instance_stats(np.array([[1, 0, 0]]), np.array([[0, 0, 2]]))
    assert stats["dice2"] == 0.0 and stats["aji"] == 0.0


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int64, np.uint64, np.float32, np.float64])
def test_any_dtype_and_huge_ids(dtype):
    true, pred = two_object_maps()
    expected = instance_stats(true, pred)
    big = np.iinfo(np.uint8).max if dtype == np.uint8 else 30000
    relabel = np.array([0, 7, 200])  # true ids 1, 2 -> 7, 200
    true_d = relabel[true].astype(dtype)
    pred_d = np.where(pred > 0, pred + big - 9, 0).astype(dtype)
    assert instance_stats(true_d, pred_d) == pytest.approx(expected)


def test_huge_and_negative_ids():
    true, pred = two_object_maps()
    huge = np.where(true > 0, true.astype(np.int64) * 10**12, 0)
    negative = np.where(pred > 0, -pred, 0)
    assert instance_stats(huge, negative) == pytest.approx(instance_stats(true, pred))


def test_map_against_itself_scores_one():
    rng = np.random.default_rng(1)
    inst = random_instance_map(rng)
    assert instance_stats(inst, inst) == pytest.approx({k: 1.0 for k in INSTANCE_KEYS})


def test_permuting_ids_changes_nothing():
    rng = np.random.default_rng(2)
    true, pred = random_instance_map(rng), random_instance_map(rng)
    perm_t = np.r_[0, rng.permutation(np.arange(1, true.max() + 1)) * 3]
    perm_p = np.r_[0, rng.permutation(np.arange(1, pred.max() + 1)) + 50]
    assert instance_stats(perm_t[true], perm_p[pred]) == pytest.approx(instance_stats(true, pred))


@pytest.mark.parametrize("seed", range(12))
def test_matches_loop_oracle_on_random_maps(seed):
    rng = np.random.default_rng(100 + seed)
    true = random_instance_map(rng, n=int(rng.integers(3, 10)))
    pred = random_instance_map(rng, n=int(rng.integers(3, 10)))
    got = instance_stats(true, pred)
    want = oracle_stats(true, pred)
    for key in INSTANCE_KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-5), key


@pytest.mark.parametrize("seed", range(4))
def test_matches_loop_oracle_below_half(seed):
    rng = np.random.default_rng(200 + seed)
    true, pred = random_instance_map(rng), random_instance_map(rng)
    got = instance_stats(true, pred, match_iou=0.2)
    want = oracle_stats(true, pred, match_iou=0.2)
    assert got["pq"] == pytest.approx(want["pq"], abs=1e-5)


def test_shape_mismatch_is_a_user_error():
    with pytest.raises(UserError, match=r"\(2, 2\) and \(2, 3\)"):
        instance_stats(np.zeros((2, 2)), np.zeros((2, 3)))


def test_pq_per_class_hand_computed():
    true_inst = np.array([[1, 1, 0, 2, 2, 0]])
    true_type = np.array([[1, 1, 0, 2, 2, 0]])
    pred_inst = np.array([[1, 1, 0, 2, 2, 3]])
    pred_type = np.array([[1, 1, 0, 1, 1, 2]])
    # class 1: true {1}, pred {1, 2}: TP 1 (IoU 1), FP 1 -> PQ 1/1.5; class 2: true {2}, pred {3}: 0;
    # class 3: absent from both -> NaN
    pq = pq_per_class(true_inst, true_type, pred_inst, pred_type, 3)
    assert pq[0] == pytest.approx(1 / 1.5)
    assert pq[1] == 0.0
    assert math.isnan(pq[2])


def test_pannuke_pq_hand_computed():
    true = np.zeros((3, 2, 4, 6), np.int32)
    pred = np.zeros((3, 2, 4, 6), np.int32)
    # image 0 (tissue A): class 0 perfect; class 1 in truth only -> PQ 0. mPQ = 0.5, bPQ: 1 TP, 1 FN -> 2/3
    true[0, 0, 0:2, 0] = 1
    pred[0, 0, 0:2, 0] = 4
    true[0, 1, 0:2, 1] = 1
    # image 1 (tissue A): class 2 in prediction only -> skipped (NaN), empty truth -> bPQ NaN
    pred[1, 0, 0:2, 2] = 1
    # image 2 (tissue B): class 4 perfect -> mPQ 1, bPQ 1
    true[2, 1, 2:4, 4] = 3
    pred[2, 1, 2:4, 4] = 3
    result = pannuke_pq(true, pred, ["A", "A", "B"])
    assert result["tissue_mpq"] == pytest.approx({"A": 0.5, "B": 1.0})
    assert result["tissue_bpq"] == pytest.approx({"A": 2 / 3, "B": 1.0})
    assert result["mpq"] == pytest.approx(0.75)
    assert result["bpq"] == pytest.approx((2 / 3 + 1) / 2)
    np.testing.assert_allclose(result["pq_per_class"], [1.0, 0.0, np.nan, np.nan, 1.0])


def test_conic_mpq_plus_pools_counts_over_images():
    def stack(inst, types):
        return np.stack([np.array(inst), np.array(types)], axis=-1)

    # image 1: class 1 TP with IoU 2/3; image 2: class 1 FN, class 2 TP IoU 1 and one FP.
    t1 = stack([[1, 1, 1, 0]], [[1, 1, 1, 0]])
    p1 = stack([[2, 2, 0, 0]], [[1, 1, 0, 0]])
    t2 = stack([[1, 1, 0, 2]], [[1, 1, 0, 2]])
    p2 = stack([[0, 0, 5, 6]], [[0, 0, 2, 2]])
    result = conic_mpq_plus([(t1, p1), (t2, p2)], nr_classes=3)
    np.testing.assert_array_equal(result["tp"], [1, 1, 0])
    np.testing.assert_array_equal(result["fp"], [0, 1, 0])
    np.testing.assert_array_equal(result["fn"], [1, 0, 0])
    pq1 = (1 / 1.5) * (2 / 3)
    pq2 = (1 / 1.5) * 1.0
    np.testing.assert_allclose(result["pq_per_class"], [pq1, pq2, 0.0])
    assert result["mpq_plus"] == pytest.approx((pq1 + pq2 + 0.0) / 3)


def test_conic_r2_matches_sklearn_including_constant_columns():
    true = np.array([[1, 4, 2, 3], [2, 4, 2, 5], [6, 4, 2, 0]])
    pred = np.array([[2, 4, 3, 3], [2, 4, 1, 4], [5, 4, 2, 1]])
    result = conic_r2(true, pred)
    # column 1: constant truth predicted exactly -> 1.0; column 2: constant truth missed -> 0.0
    expected = [r2_score(true[:, c], pred[:, c]) for c in range(4)]
    assert expected[1] == 1.0 and expected[2] == 0.0
    np.testing.assert_allclose(result["r2_per_class"], expected)
    assert result["r2"] == pytest.approx(np.mean(expected))
    assert result["r2_per_class"][0] == pytest.approx(1 - 2 / 14)  # RSS 1+0+1, TSS 4+1+9


def test_conic_r2_needs_two_images():
    assert math.isnan(conic_r2(np.array([[1, 2]]), np.array([[1, 2]]))["r2"])


@pytest.mark.realdata
def test_real_consep_patch_matches_loop_oracle(data_root):
    true = np.load(data_root / "consep" / "inst" / "train_1_005.npy")
    pred = np.roll(true, (2, -1), axis=(0, 1))  # shifted copy: partial overlaps everywhere
    pred[100:140, 100:140] = 0  # and a dropped region
    got, want = instance_stats(true, pred), oracle_stats(true, pred)
    for key in INSTANCE_KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-5), key
    assert instance_stats(true, true) == pytest.approx({k: 1.0 for k in INSTANCE_KEYS})


def test_sparse_overlap_path_gives_the_same_result(monkeypatch):
    rng = np.random.default_rng(7)
    true, pred = random_instance_map(rng, n=9), random_instance_map(rng, n=9)
    dense_result = instance_stats(true, pred)
    monkeypatch.setattr("metrics.overlap._DENSE_TABLE_CELLS", 1)
    assert instance_stats(true, pred) == pytest.approx(dense_result)


@pytest.mark.parametrize("seed", range(3))
def test_component_hungarian_reaches_the_global_optimum(seed):
    rng = np.random.default_rng(400 + seed)
    ov = overlap_table(random_instance_map(rng, (64, 64), 40), random_instance_map(rng, (64, 64), 40))
    matched = hungarian_pairs(ov, ov.pair_iou)
    dense = ov.iou_matrix()
    rows, cols = linear_sum_assignment(-dense)
    assert np.unique(ov.pair_true[matched]).size == matched.size  # one-to-one
    assert np.unique(ov.pair_pred[matched]).size == matched.size
    assert ov.pair_iou[matched].sum() == pytest.approx(dense[rows, cols].sum())
