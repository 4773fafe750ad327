"""Dataset statistics: fragments, areas, per-type counts and the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loader.stats import _type_counts, fragmented_ids, instance_areas, main


def test_fragmented_ids_uses_8_connectivity() -> None:
    inst_map = np.array(
        [
            [1, 0, 2, 0, 2],
            [0, 1, 0, 0, 0],
            [3, 3, 0, 4, 0],
            [0, 0, 0, 0, 4],
        ]
    )
    np.testing.assert_array_equal(fragmented_ids(inst_map), [2])


def test_fragmented_ids_touching_instances_are_separate() -> None:
    inst_map = np.array([[5, 5, 7, 7], [0, 0, 0, 5]])
    np.testing.assert_array_equal(fragmented_ids(inst_map), [5])


def test_instance_areas_in_id_order() -> None:
    np.testing.assert_array_equal(instance_areas(np.array([[0, 9, 9], [3, 9, 0]])), [1, 3])


def test_type_counts_majority_vote_ties_to_lower_type() -> None:
    inst_map = np.array([[1, 1, 1, 2, 2]])
    type_map = np.array([[3, 3, 1, 2, 4]])
    assert _type_counts(inst_map, type_map) == {3: 1, 2: 1}


def test_cli_prints_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("images", "inst", "types"):
        (tmp_path / name).mkdir()
    Image.fromarray(np.zeros((3, 4, 3), dtype=np.uint8)).save(tmp_path / "images" / "a.png")
    np.save(tmp_path / "inst" / "a.npy", np.array([[1, 1, 0, 2], [0, 0, 0, 0], [3, 0, 0, 2]], dtype=np.int32))
    Image.fromarray(np.array([[1, 1, 0, 2], [0, 0, 0, 0], [1, 0, 0, 2]], dtype=np.uint8)).save(tmp_path / "types" / "a.png")
    assert main(["folder", str(tmp_path), "--option", "class_names=[tumour, stroma]", "--option", "mpp=0.5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "images: 1",
        "instances: 3",
        "  1 tumour: 2",
        "  2 stroma: 1",
        "area px: p5 1, p25 2, p50 2, p75 2, p95 2",
        "mpp: 0.5 (1 images)",
        "not one 8-connected piece: 1 (33.33 %)",
    ]


def test_cli_user_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["cpm16", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "did you mean 'cpm15'" in capsys.readouterr().err
