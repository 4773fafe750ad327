"""process.py's cell composition (nuclei per type per image, --count-crop) and the counts' R²."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import process
from inference.processing import composition, score_predictions, write_composition
from misc.io import write_image, write_label


def nuclei(size: int, boxes: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Instance and type maps with one 4x4 nucleus per (row, col, type)."""
    inst, types = np.zeros((size, size), np.int32), np.zeros((size, size), np.int32)
    for index, (row, col, kind) in enumerate(boxes, start=1):
        inst[row : row + 4, col : col + 4] = index
        types[row : row + 4, col : col + 4] = kind
    return inst, types


def test_composition_counts_by_majority_type_inside_the_crop():
    inst, types = nuclei(32, [(0, 0, 1), (14, 14, 2), (14, 20, 2), (26, 26, 3)])
    types[0, 0] = 3  # a minority pixel does not change the nucleus's type
    assert composition(inst, types, None).tolist() == [1, 2, 1]
    assert composition(inst, types, 16).tolist() == [0, 2]  # central 16 x 16: rows/cols 8..23
    assert composition(inst, np.zeros_like(types), None).tolist() == []
    assert composition(inst, None, None) is None


def test_composition_csv_pads_types_and_names_them(tmp_path):
    path = write_composition(tmp_path / "composition.csv", {"b": np.array([1, 2]), "a": np.array([0, 0, 4])},
                             {0: ("background", (0, 0, 0)), 1: ("other", (1, 1, 1)), 2: ("inflammatory", (2, 2, 2))})
    rows = list(csv.reader(path.open()))
    assert rows == [["image", "other", "inflammatory", "type3", "total"], ["a", "0", "0", "4", "4"], ["b", "1", "2", "0", "3"]]


def test_r2_of_counts_uses_the_crop(tmp_path):
    gt = tmp_path / "gt"
    predictions = {}
    for name, true_boxes, pred_boxes in (
        ("p0", [(14, 14, 1), (0, 0, 1)], [(14, 14, 1)]),
        ("p1", [(14, 14, 1), (14, 20, 1)], [(14, 14, 1), (14, 20, 1), (26, 0, 1)]),
        ("p2", [], []),
    ):
        inst, types = nuclei(32, true_boxes)
        write_image(gt / "images" / f"{name}.png", np.full((32, 32, 3), 200, np.uint8))
        write_label(gt / "inst" / f"{name}.png", inst)
        write_label(gt / "types" / f"{name}.png", types)
        predictions[name] = nuclei(32, pred_boxes)
    # central 16 x 16: true counts 1, 2, 0 and predicted 1, 2, 0 (the extra nuclei lie outside)
    (tmp_path / "crop").mkdir()
    score_predictions(f"folder:{gt}", predictions, tmp_path / "crop", 40, count_crop=16)
    cropped = json.loads((tmp_path / "crop" / "metrics.json").read_text())
    assert cropped["pooled"]["r2"] == pytest.approx(1.0) and cropped["options"]["count_crop"] == 16
    (tmp_path / "whole").mkdir()
    score_predictions(f"folder:{gt}", predictions, tmp_path / "whole", 40)
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    # whole image: true 2, 2, 0 and predicted 1, 3, 0: RSS 2, TSS 8/3, R² = 1 - 3/4
    assert whole["pooled"]["r2"] == pytest.approx(0.25) and "mpq_plus" in whole["pooled"]


def test_count_crop_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        process.main(["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--count-crop", "0"])
    assert stop.value.code == 2 and "--count-crop must be >= 1" in capsys.readouterr().err
