"""type_f1, glas_object_metrics, semantic_iou and mean_rows: literal cases and oracle checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metrics import glas_object_metrics, mean_rows, semantic_iou, type_f1
from misc.errors import UserError
from tests.metrics.metrics_oracle import oracle_glas, random_instance_map


def test_type_f1_hand_computed():
    true_cents = [np.array([[0, 0], [20, 0], [50, 50]]), np.zeros((0, 2))]
    true_types = [np.array([1, 2, 1]), np.zeros(0)]
    pred_cents = [np.array([[1, 0], [21, 0], [100, 100]]), np.array([[5, 5]])]
    pred_types = [np.array([1, 1, 2]), np.array([2])]
    result = type_f1(true_cents, true_types, pred_cents, pred_types, nr_types=3)
    # 2 pairs within 12 px; FP: (100,100) and (5,5); FN: (50,50)
    assert (result["tp_d"], result["fp_d"], result["fn_d"]) == (2, 2, 1)
    assert result["f1_d"] == pytest.approx(4 / 7)
    assert result["acc"] == pytest.approx(0.5)
    # type 1: TP 1, FP_dt 1, FN_d 1 -> 2 / (2 + 2 + 1); type 2: FN_dt 1, FP_d 2 -> 0; type 3 absent -> NaN
    assert result["f1_type"][0] == pytest.approx(2 / 5)
    assert result["f1_type"][1] == 0.0
    assert math.isnan(result["f1_type"][2])


def test_type_f1_radius_is_inclusive():
    result = type_f1([np.array([[0.0, 0.0]])], [np.array([1])], [np.array([[12.0, 0.0]])], [np.array([1])], 1)
    assert result["tp_d"] == 1
    result = type_f1([np.array([[0.0, 0.0]])], [np.array([1])], [np.array([[12.01, 0.0]])], [np.array([1])], 1)
    assert result["tp_d"] == 0


def test_type_f1_rejects_mismatched_lengths():
    with pytest.raises(UserError, match="one entry per image"):
        type_f1([np.zeros((1, 2))], [], [np.zeros((1, 2))], [np.array([1])], 1)


def glas_maps() -> tuple[np.ndarray, np.ndarray]:
    """G1 rows 0-3 x cols 0-3, G2 rows 0-1 x cols 10-11 (unmatched);
    S1 rows 0-3 x cols 0-2 (75 % of G1), S2 rows 6-7 x cols 0-1 (unmatched)."""
    true = np.zeros((8, 12), np.int32)
    true[0:4, 0:4] = 1
    true[0:2, 10:12] = 2
    pred = np.zeros((8, 12), np.int32)
    pred[0:4, 0:3] = 1
    pred[6:8, 0:2] = 2
    return true, pred


def test_glas_one_unmatched_object_per_side():
    result = glas_object_metrics(*glas_maps())
    assert (result["tp"], result["fp"], result["fn"]) == (1, 1, 1)
    assert result["f1"] == pytest.approx(0.5)
    dice_11 = 2 * 12 / (16 + 12)
    assert result["dice_obj"] == pytest.approx((16 / 20 * dice_11 + 12 / 16 * dice_11) / 2)
    # G2's nearest prediction is S1 (H = sqrt(104)); S2's nearest truth is G1 (H = sqrt(40)); H(G1, S1) = 1.
    haus_g = 16 / 20 * 1 + 4 / 20 * math.sqrt(104)
    haus_s = 12 / 16 * 1 + 4 / 16 * math.sqrt(40)
    assert result["hausdorff_obj"] == pytest.approx((haus_g + haus_s) / 2)


def test_glas_half_coverage_is_not_a_hit():
    true = np.zeros((4, 4), np.int32)
    true[:, :] = 1
    pred = np.zeros((4, 4), np.int32)
    pred[:, :2] = 1  # exactly 50 % of the true object
    assert glas_object_metrics(true, pred)["tp"] == 0


def test_glas_empty_maps():
    empty = np.zeros((4, 4), np.int32)
    full = np.ones((4, 4), np.int32)
    assert all(math.isnan(glas_object_metrics(empty, empty)[k]) for k in ("f1", "dice_obj", "hausdorff_obj"))
    one_side = glas_object_metrics(full, empty)
    assert one_side["f1"] == 0.0 and one_side["dice_obj"] == 0.0 and math.isnan(one_side["hausdorff_obj"])


@pytest.mark.parametrize("seed", range(4))
def test_glas_matches_loop_oracle(seed):
    rng = np.random.default_rng(300 + seed)
    true = random_instance_map(rng, (20, 20), n=4)
    pred = random_instance_map(rng, (20, 20), n=4)
    got, want = glas_object_metrics(true, pred), oracle_glas(true, pred)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


def test_semantic_iou_hand_computed():
    true = np.array([[0, 0, 1, 1], [2, 2, 2, 2]])
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 2]])
    result = semantic_iou(true, pred, nr_classes=4)
    np.testing.assert_allclose(result["iou_per_class"][:3], [1 / 3, 2 / 3, 3 / 4])
    assert math.isnan(result["iou_per_class"][3])  # class 3 in neither map
    assert result["miou"] == pytest.approx((1 / 3 + 2 / 3 + 3 / 4) / 3)
    # true pixel counts 2, 2, 4 -> weights 1/ln2 : 1/ln2 : 1/ln4 = 0.4 : 0.4 : 0.2
    assert result["fiou"] == pytest.approx(0.4 / 3 + 0.4 * 2 / 3 + 0.2 * 3 / 4)


def test_semantic_iou_accumulates_over_images():
    a_true, a_pred = np.array([[0, 1]]), np.array([[1, 1]])
    b_true, b_pred = np.array([[1, 1, 1]]), np.array([[1, 0, 0]])
    result = semantic_iou([a_true, b_true], [a_pred, b_pred], 2)
    # class 1: I = 1 + 1, U = 2 + 3 -> 0.4 (mean of per-image IoUs would be 0.5 and 1/3)
    assert result["iou_per_class"][1] == pytest.approx(0.4)
    assert result["confusion"].sum() == 5


def test_semantic_iou_rejects_out_of_range_class():
    with pytest.raises(UserError, match="0..1"):
        semantic_iou(np.array([[0, 2]]), np.array([[0, 1]]), 2)


def test_mean_rows_skips_and_counts_nan():
    means = mean_rows([{"pq": 1.0, "aji": float("nan")}, {"pq": 0.5, "aji": 0.25}, {"pq": float("nan")}])
    assert means["pq"] == {"mean": 0.75, "n": 2, "n_nan": 1}
    assert means["aji"] == {"mean": 0.25, "n": 1, "n_nan": 2}
