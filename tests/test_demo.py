"""The README's main job: ``python demo.py`` trains, infers, processes and beats the baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from demo import CLAIMED_PQ, claim_missed, main, threshold_baseline


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


def summary_with(pq: float, baseline_pq: float) -> dict:
    return {"hovernet": {"pq": pq}, "threshold_cc_baseline": {"pq": baseline_pq}}


def test_claim_holds_at_the_claimed_pq_above_the_baseline():
    assert claim_missed(summary_with(CLAIMED_PQ, 0.49)) is None


def test_claim_missed_under_the_claimed_pq():
    assert "0.4990 on the held-out tiles is under the claimed 0.5" in claim_missed(summary_with(0.499, 0.1))


def test_claim_missed_when_the_baseline_is_as_good():
    assert "0.6000 is not above the threshold baseline's 0.6000" in claim_missed(summary_with(0.6, 0.6))


def test_main_exits_1_with_one_line_when_the_claim_is_missed(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("demo.run_demo", lambda *args: summary_with(0.3, 0.2))
    assert main(["--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["hovernet"]["pq"] == 0.3
    assert captured.err.strip().splitlines() == ["demo: HoVer-Net's mean PQ 0.3000 on the held-out tiles is under the claimed 0.5"]


@pytest.mark.main_job
def test_demo_beats_threshold_baseline_with_pq_at_least_half(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "demo"), "--num-threads", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1  # stdout carries only the JSON summary
    summary = json.loads(lines[0])
    assert summary["tiles"] == 4
    assert claim_missed(summary) is None
