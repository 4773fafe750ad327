"""Semantic and patch scores against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metrics.patch import patch_scores, roc_auc
from metrics.semantic import confusion_matrix, confusion_scores, fiou_weights, semantic_iou


def test_confusion_scores_by_hand() -> None:
    true = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    scores = confusion_scores(confusion_matrix(true, pred, 3))
    np.testing.assert_allclose(scores["iou"], [1 / 3, 2 / 3, 1 / 2])
    np.testing.assert_allclose(scores["dice"], [2 / 4, 4 / 5, 2 / 3])
    assert scores["miou"] == pytest.approx(0.5)
    assert scores["pixel_accuracy"] == pytest.approx(4 / 6)
    assert scores["fiou"] == pytest.approx(0.5)  # equal true counts: equal weights


def test_fiou_uses_log_inverse_frequency_weights() -> None:
    # 10 true pixels of class 0 (half found), 100 of class 1 (all found, plus the 5 missed ones)
    true = np.array([[0] * 10 + [1] * 100])
    pred = np.array([[0] * 5 + [1] * 105])
    scores = semantic_iou(true, pred, 2)
    iou0, iou1 = 5 / 10, 100 / 105
    w0, w1 = 2 / 3, 1 / 3  # 1/log 10 : 1/log 100 = 2 : 1
    assert scores["fiou"] == pytest.approx(w0 * iou0 + w1 * iou1)
    assert scores["miou"] == pytest.approx((iou0 + iou1) / 2)
    np.testing.assert_allclose(fiou_weights(np.array([10, 100, 1, 0])), [2 / 3, 1 / 3, 0, 0])


def test_pooled_iou_is_not_the_mean_of_per_image_ious() -> None:
    a_true, a_pred = np.array([[1, 1, 1, 1]]), np.array([[1, 1, 1, 1]])
    b_true, b_pred = np.array([[1, 0]]), np.array([[0, 0]])
    pooled = semantic_iou([a_true, b_true], [a_pred, b_pred], 2)["iou_per_class"]
    assert pooled[1] == pytest.approx(4 / 5)


def test_roc_auc_by_hand_with_a_tie() -> None:
    truth = np.array([1, 0, 1, 0])
    score = np.array([0.9, 0.8, 0.4, 0.4])
    assert roc_auc(truth, score) == pytest.approx(2.5 / 4)
    assert math.isnan(roc_auc(np.ones(3), np.arange(3.0)))


def test_roc_auc_matches_scikit_learn() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 50)
    score = np.round(rng.random(50), 1)  # ties
    assert roc_auc(truth, score) == pytest.approx(roc_auc_score(truth, score))


def test_multilabel_scores_by_hand() -> None:
    truth = np.array([[1, 0, 1], [0, 1, 0]])
    labels = np.array([[1, 0, 0], [0, 1, 0]])
    probs = np.array([[0.9, 0.2, 0.4], [0.1, 0.7, 0.3]])
    scores = patch_scores(truth, probs, labels, multilabel=True, class_names=["a", "b", "c"])
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores["label_accuracy"] == pytest.approx(5 / 6)
    assert scores["hamming_score"] == pytest.approx((1 / 2 + 1) / 2)
    assert (scores["f1_a"], scores["f1_b"], scores["f1_c"]) == (1.0, 1.0, 0.0)
    assert scores["macro_f1"] == pytest.approx(2 / 3)
    assert scores["auc_a"] == 1.0 and scores["auc_c"] == 1.0


def test_multiclass_accuracy_is_arg_max_agreement() -> None:
    truth = np.eye(3)[[0, 1, 2, 2]]
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    labels = np.eye(3)[np.argmax(probs, 1)]
    scores = patch_scores(truth, probs, labels, multilabel=False)
    assert scores["accuracy"] == pytest.approx(3 / 4)
    assert "exact_match" not in scores
