"""MoNuSeg recipe split files and the cross-validation summary (no training: fold scores are given)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

RECIPES = REPO_ROOT / "benchmarks" / "recipes"


def _parts(name: str) -> dict[str, list[str]]:
    return json.loads((RECIPES / name).read_text())["parts"]


def test_folds_validate_every_tile_once() -> None:
    parts = _parts("monuseg_folds.json")
    tiles = set(_parts("monuseg_split.json")["train"]) | set(_parts("monuseg_split.json")["valid"])
    valids = [parts[f"fold{fold}_valid"] for fold in range(4)]
    assert sorted(sum(valids, [])) == sorted(tiles) and len(tiles) == 13
    for fold in range(4):
        assert sorted(parts[f"fold{fold}_train"] + parts[f"fold{fold}_valid"]) == sorted(tiles)


def test_fold0_is_the_recipe_split() -> None:
    folds, split = _parts("monuseg_folds.json"), _parts("monuseg_split.json")
    assert sorted(folds["fold0_train"]) == sorted(split["train"])
    assert sorted(folds["fold0_valid"]) == sorted(split["valid"])


def _write_fold_scores(out: Path, fold: int, pqs: list[float]) -> None:
    rows = [{"name": f"f{fold}_{i}", "pq": pq, "dq": 0.8, "sq": 0.7, "dice": 0.8, "aji": 0.6, "aji_plus": 0.6}
            for i, pq in enumerate(pqs)]
    pred = out / f"fold{fold}" / "pred"
    pred.mkdir(parents=True)
    (pred / "metrics.json").write_text(json.dumps({"per_image": rows}))


def test_cv_summary_averages_over_images_not_folds(tmp_path: Path) -> None:
    _write_fold_scores(tmp_path, 1, [0.5, 0.6, 0.7, 0.8])
    _write_fold_scores(tmp_path, 3, [0.2, 0.4])
    result = subprocess.run(["bash", str(RECIPES / "monuseg_cv.sh"), "hovernet", str(tmp_path / "data"),
                             str(tmp_path), "1", "3"], capture_output=True, text=True, check=True)
    lines = result.stdout.strip().splitlines()
    assert lines[:2] == [f"fold1: scores found in {tmp_path}/fold1, skipped", f"fold3: scores found in {tmp_path}/fold3, skipped"]
    summary = json.loads(lines[-1])
    assert summary["images"] == "cross-validation (6)"
    assert summary["pq"] == pytest.approx(3.2 / 6, abs=1e-4)
    assert summary["fold_pq"] == {"fold1": 0.65, "fold3": 0.3}


def test_cv_unknown_family_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(RECIPES / "monuseg_cv.sh"), "nosuch", str(tmp_path), str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "no recipe benchmarks/recipes/monuseg_nosuch_cpu.sh for family 'nosuch'" in result.stderr


def _train_options(value: str | None) -> list[str]:
    env = "unset TRAIN_OPTIONS" if value is None else f"TRAIN_OPTIONS='{value}'"
    script = f"source benchmarks/recipes/monuseg_common.sh; {env}; words_of \"${{TRAIN_OPTIONS:-}}\""
    result = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def test_train_options_are_split_into_train_py_arguments() -> None:
    assert _train_options("  --set train.seed=11   --set infer.tta=false ") == [
        "--set", "train.seed=11", "--set", "infer.tta=false"]


def test_train_options_unset_add_nothing() -> None:
    assert _train_options(None) == []


def _common(command: str, *args: str) -> list[str]:
    """Output lines of a ``monuseg_common.sh`` function called with ``args``."""
    script = f'source benchmarks/recipes/monuseg_common.sh; {command} "$@"'
    result = subprocess.run(["bash", "-c", script, "bash", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    return result.stdout.splitlines()


def test_budget_planning_takes_only_the_set_options() -> None:
    options = ["--resume", "--set", "train.seed=11", "--device", "cpu", "--set", "model.reinhard=null"]
    assert _common("set_options", *options) == ["--set", "train.seed=11", "--set", "model.reinhard=null"]


def test_a_resumed_recipe_keeps_its_recorded_training_budget(tmp_path: Path) -> None:
    from config import load_config, write_run_record

    cfg = load_config("hovernet", "cpu", overrides=["train.time_budget_s=1234"])
    write_run_record(tmp_path, cfg, argv=[])
    assert _common("recorded_budget", str(tmp_path)) == ["1234"]
