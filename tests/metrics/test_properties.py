"""Property tests of the instance and semantic metrics on random maps (hypothesis): invariance
to relabelling instance ids, symmetry where the definition is symmetric, bounds, the value on
identical maps, and agreement with the loop-based reference ports of the published code."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from metrics import INSTANCE_KEYS, instance_stats
from metrics.semantic import confusion_matrix, confusion_scores
from tests.metrics.metrics_oracle import oracle_stats

SHAPE = (12, 12)
#: Instance maps: arbitrary labellings of a small image, 0 = background, up to 6 instances
#: (an instance need not be connected: the metrics work on ids, not on components).
label_maps = arrays(np.int32, SHAPE, elements=st.integers(0, 6))
FEW = settings(max_examples=25, deadline=None)
#: Scores whose definition is symmetric in truth and prediction (AJI is not: it charges
#: unpaired predictions only).
SYMMETRIC = ("dice", "dq", "sq", "pq")


def _same(a: dict, b: dict, keys=INSTANCE_KEYS) -> bool:
    return all(np.isclose(a[k], b[k], equal_nan=True, rtol=0, atol=1e-12) for k in keys)


def _relabelled(labels: np.ndarray, seed: int) -> np.ndarray:
    """``labels`` with its non-zero ids sent to distinct random large ids (0 stays 0)."""
    rng = np.random.default_rng(seed)
    lookup = np.zeros(int(labels.max()) + 1, np.int32)
    lookup[1:] = rng.choice(np.arange(1, 2**31 - 1, 7919), size=len(lookup) - 1, replace=False)
    return lookup[labels]


@FEW
@given(label_maps, label_maps, st.integers(0, 2**32 - 1))
def test_instance_scores_ignore_how_ids_are_numbered(true: np.ndarray, pred: np.ndarray, seed: int) -> None:
    expected = instance_stats(true, pred)
    assert _same(expected, instance_stats(_relabelled(true, seed), _relabelled(pred, seed + 1)))


@FEW
@given(label_maps, label_maps)
def test_symmetric_scores_are_symmetric_and_all_are_bounded(true: np.ndarray, pred: np.ndarray) -> None:
    forward, backward = instance_stats(true, pred), instance_stats(pred, true)
    assert _same(forward, backward, SYMMETRIC)
    assert all(np.isnan(forward[k]) or 0.0 <= forward[k] <= 1.0 for k in INSTANCE_KEYS)
    assert np.isnan(forward["pq"]) or np.isclose(forward["pq"], forward["dq"] * forward["sq"], atol=1e-12)


@FEW
@given(label_maps)
def test_a_map_scored_against_itself_is_perfect(labels: np.ndarray) -> None:
    scores = instance_stats(labels, labels)
    if labels.any():
        assert all(np.isclose(scores[k], 1.0) for k in INSTANCE_KEYS)


@settings(max_examples=10, deadline=None)
@given(label_maps, label_maps)
def test_instance_scores_agree_with_the_reference_ports(true: np.ndarray, pred: np.ndarray) -> None:
    assume(true.any() and pred.any())  # the published code divides by zero on two empty maps
    ours, reference = instance_stats(true, pred), oracle_stats(true, pred)
    for key in INSTANCE_KEYS:
        if np.isnan(ours[key]):  # undefined here; the published code returns its 1e-6 guard's value
            continue
        assert np.isclose(ours[key], reference[key], atol=1e-5), (key, ours[key], reference[key])


class_maps = arrays(np.int64, SHAPE, elements=st.integers(0, 3))


@FEW
@given(class_maps, class_maps)
def test_semantic_scores_are_bounded_symmetric_and_match_their_definition(true: np.ndarray, pred: np.ndarray) -> None:
    forward = confusion_scores(confusion_matrix(true, pred, 4))
    backward = confusion_scores(confusion_matrix(pred, true, 4))
    for key in ("miou", "mdice", "pixel_accuracy"):
        assert np.isclose(forward[key], backward[key], equal_nan=True)
        assert np.isnan(forward[key]) or 0.0 <= forward[key] <= 1.0
    assert np.isclose(forward["pixel_accuracy"], (true == pred).mean())
    present = [c for c in range(4) if (true == c).any() or (pred == c).any()]
    iou = [((true == c) & (pred == c)).sum() / ((true == c) | (pred == c)).sum() for c in present]
    assert np.isclose(forward["miou"], np.mean(iou))
