"""Binary region scores (DSC, precision, recall per image, averaged over images) by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metrics import mean_region_scores, region_scores
from misc.errors import UserError


def test_one_image_by_hand():
    true = np.array([[1, 1, 0], [1, 0, 0]])
    pred = np.array([[1, 0, 0], [1, 1, 1]])
    # TP = 2, FP = 2, FN = 1
    scores = region_scores(true, pred)
    assert scores == pytest.approx({"dsc": 4 / 7, "precision": 0.5, "recall": 2 / 3})


def test_undefined_scores_are_nan_and_skipped_in_the_mean():
    empty = np.zeros((2, 2))
    scores = region_scores(empty, empty)
    assert all(math.isnan(v) for v in scores.values())
    assert math.isnan(region_scores(np.ones((2, 2)), empty)["precision"])
    # slide 1: perfect; slide 2: TP 1, FP 3, FN 0 -> DSC 2/5, precision 1/4, recall 1; slide 3: nothing anywhere
    trues = [np.ones((2, 2)), np.array([[1, 0], [0, 0]]), empty]
    preds = [np.ones((2, 2)), np.ones((2, 2)), empty]
    means = mean_region_scores(trues, preds)
    assert means["dsc"]["mean"] == pytest.approx((1 + 0.4) / 2) and means["dsc"]["n_nan"] == 1
    assert means["precision"]["mean"] == pytest.approx((1 + 0.25) / 2)
    assert means["recall"]["mean"] == pytest.approx(1.0)


def test_shape_mismatch():
    with pytest.raises(UserError, match="same shape"):
        region_scores(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(UserError, match="equal numbers"):
        mean_region_scores([np.zeros((2, 2))], [])
