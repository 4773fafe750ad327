"""The README's main job: ``python demo.py`` trains, infers, processes and beats the baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from demo import main, threshold_baseline


def two_squares(bridge: float) -> np.ndarray:
    """(8, 8) probabilities: a 4x4 square at the top left (0.9), a 3x3 square at the bottom
    right (0.6) and pixel (4, 4), touching both diagonally, set to ``bridge``."""
    prob = np.zeros((8, 8), np.float32)
    prob[0:4, 0:4] = 0.9
    prob[5:8, 5:8] = 0.6
    prob[4, 4] = bridge
    return prob


def test_baseline_joins_diagonal_neighbours_into_one_component():
    labels = threshold_baseline(two_squares(bridge=0.5))
    assert int((labels == 1).sum()) == 16 + 9 + 1
    assert int(labels.max()) == 1


def test_baseline_drops_components_below_10_pixels():
    labels = threshold_baseline(two_squares(bridge=0.4))
    assert int((labels == 1).sum()) == 16
    assert int(labels.max()) == 1


@pytest.mark.slow
def test_demo_beats_threshold_baseline_with_pq_at_least_half(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "demo"), "--num-threads", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1  # stdout carries only the JSON summary
    summary = json.loads(lines[0])
    assert summary["tiles"] == 4
    assert summary["hovernet"]["pq"] >= 0.5
    assert summary["hovernet"]["pq"] > summary["threshold_cc_baseline"]["pq"]
