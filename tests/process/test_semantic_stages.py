"""Staged semantic results (e.g. an ablation): every stage's files and scores from one result."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inference.scoring import score_semantic
from misc.io import read_label, write_label
from models.tasks import stage_class_maps, task_kind

INFO = {0: ("bg", (255, 255, 255)), 1: ("a", (255, 0, 0)), 2: ("b", (0, 0, 255))}


def staged_result() -> dict:
    first = np.array([[1, 1, 2], [2, 2, 2]], np.int32)
    final = np.array([[0, 1, 2], [2, 2, 2]], np.int32)
    return {"class_map": final, "stages": {"first": first, "final": final}}


def test_earlier_stages_are_written_beside_the_result(tmp_path) -> None:
    result = staged_result()
    image = np.zeros((2, 3, 3), np.uint8)
    rows = task_kind("semantic").write(tmp_path, "x", result, image, 40, ("label", "overlay", "areas"), INFO, None)
    assert (read_label(tmp_path / "label" / "x.png") == result["class_map"]).all()
    assert (read_label(tmp_path / "label_first" / "x.png") == result["stages"]["first"]).all()
    assert (tmp_path / "overlay_first" / "x.png").is_file() and not (tmp_path / "label_final").exists()
    assert {row["class"] for row in rows["areas.csv"]} == {"bg", "a", "b"}  # areas of the result only


def test_every_stage_is_scored_in_one_table(tmp_path) -> None:
    truth = np.array([[0, 1, 2], [2, 2, 1]], np.int32)
    write_label(tmp_path / "gt" / "x.png", truth)
    score_semantic(str(tmp_path / "gt"), {"x": stage_class_maps(staged_result())}, INFO, "test", tmp_path)
    pooled = json.loads((tmp_path / "metrics.json").read_text())["pooled"]
    assert pooled["first:pixel_accuracy"] == pytest.approx(4 / 6) and pooled["first:iou_bg"] == 0.0
    assert pooled["first:iou_a"] == pytest.approx(1 / 3) and pooled["first:iou_b"] == pytest.approx(3 / 4)
    assert pooled["final:pixel_accuracy"] == pooled["pixel_accuracy"] == pytest.approx(5 / 6)
    assert pooled["miou"] == pytest.approx((1 + 1 / 2 + 3 / 4) / 3)


def test_a_plain_result_has_one_unprefixed_map() -> None:
    assert list(stage_class_maps({"class_map": np.zeros((2, 2))})) == [""]
