"""CHR-Net coverage F1: hand-computed counts and pooled scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metrics import coverage_counts, coverage_f1
from misc.errors import UserError


def _image_one() -> tuple[np.ndarray, ...]:
    true_inst = np.zeros((6, 8), np.int32)
    true_inst[0:2, 0:2] = 1  # class 1, 4 px
    true_inst[0:2, 4:6] = 2  # class 1, 4 px
    true_inst[3:5, 0:3] = 3  # class 2, 6 px
    true_type = np.select([true_inst == 1, true_inst == 2, true_inst == 3], [1, 1, 2], 0)
    pred_inst = np.zeros((6, 8), np.int32)
    pred_inst[0:2, 0] = 10
    pred_inst[0, 1] = 10  # 3 of nucleus 1's 4 px: correct
    pred_inst[0, 4:6] = 11  # 2 of nucleus 2's 4 px: exactly half, not correct
    pred_inst[3:5, 0:3] = 12  # covers nucleus 3 but predicted as class 1: not correct for class 2
    pred_inst[4:6, 6:8] = 13  # a class-2 prediction on background
    pred_type = np.select([pred_inst == 10, pred_inst == 11, pred_inst == 12, pred_inst == 13], [1, 1, 1, 2], 0)
    return true_inst, true_type, pred_inst, pred_type


def _image_two() -> tuple[np.ndarray, ...]:
    true_inst = np.zeros((4, 6), np.int32)
    true_inst[1, 0:5] = 7  # class 3, 5 px
    true_type = np.where(true_inst > 0, 3, 0)
    pred_inst = np.zeros((4, 6), np.int32)
    pred_inst[1, 0:2] = 1
    pred_inst[0:2, 2] = 2  # two class-3 predictions together cover 3 of 5 px: correct
    pred_type = np.where(pred_inst > 0, 3, 0)
    return true_inst, true_type, pred_inst, pred_type


def test_counts_of_one_image_by_hand():
    counts = coverage_counts(*_image_one(), nr_classes=3)
    # rows: class 1, 2, 3; columns: total, predicted, correct (no background id counted)
    assert counts.tolist() == [[2, 3, 1], [1, 1, 0], [0, 0, 0]]


def test_union_of_predictions_counts_as_coverage():
    assert coverage_counts(*_image_two(), nr_classes=3).tolist() == [[0, 0, 0], [0, 0, 0], [1, 2, 1]]


def test_pooled_scores_by_hand():
    result = coverage_f1([coverage_counts(*_image_one(), nr_classes=3), coverage_counts(*_image_two(), nr_classes=3)])
    # class 1: P 1/3, R 1/2, F1 2/(2 + 3); class 2: nothing correct -> 0; class 3: 1 of 1 true, 1 of 2 predicted
    assert result["precision_type"].tolist() == pytest.approx([1 / 3, 0.0, 1 / 2])
    assert result["recall_type"].tolist() == pytest.approx([1 / 2, 0.0, 1.0])
    assert result["f1_type"].tolist() == pytest.approx([0.4, 0.0, 2 / 3])
    # overall: total 4, predicted 6, correct 2
    assert (result["precision"], result["recall"], result["f1"]) == pytest.approx((2 / 6, 2 / 4, 4 / 10))


def test_f1_is_the_harmonic_mean_of_precision_and_recall():
    result = coverage_f1(np.array([[4, 5, 3]]))
    p, r = result["precision"], result["recall"]
    assert result["f1"] == pytest.approx(2 * p * r / (p + r))


def test_absent_class_is_nan():
    result = coverage_f1(coverage_counts(*_image_two(), nr_classes=3))
    assert all(math.isnan(result[key][0]) for key in ("precision_type", "recall_type", "f1_type"))


def test_shape_mismatch_and_empty_counts_are_refused():
    true_inst, true_type, pred_inst, pred_type = _image_one()
    with pytest.raises(UserError, match="four"):
        coverage_counts(true_inst, true_type[:5], pred_inst, pred_type, 3)
    with pytest.raises(UserError, match="at least one image"):
        coverage_f1([])


def test_reported_beside_the_centroid_f1_by_the_metrics_command():
    from metrics.scoring import LabelPair, score_pairs

    true_inst, true_type, pred_inst, pred_type = _image_one()
    _, pooled = score_pairs([LabelPair("one", true_inst, pred_inst, true_type, pred_type)], 3, 12.0, None, False)
    expected = coverage_f1(coverage_counts(true_inst, true_type, pred_inst, pred_type, 3))
    assert "f1_d" in pooled and pooled["coverage_f1"] == pytest.approx(expected["f1"])
    assert [pooled[f"coverage_f1_type{c}"] for c in (1, 2)] == pytest.approx(expected["f1_type"][:2].tolist())
