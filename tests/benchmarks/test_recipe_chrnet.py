"""The CoNSeP CHR-Net recipe's options and its JSON summary (no training)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from config import load_config
from engine.budget import score_windows
from inference.sweep import parse_sweep
from models import get_family
from models.chrnet.postproc import CHRNetPostprocParams
from tests.conftest import REPO_ROOT

RECIPE = "benchmarks/recipes/consep_chrnet_cpu.sh"


def _bash(command: str, *args: str) -> list[str]:
    script = f'source {RECIPE}; {command}'
    result = subprocess.run(["bash", "-c", script, "bash", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True)
    return result.stdout.splitlines()


def _settings(field: str) -> list[str]:
    """A field of recipes.yaml's consep_chrnet, as the recipe reads it."""
    result = subprocess.run([sys.executable, "-m", "benchmarks.recipes.settings", "consep_chrnet", field], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def _train_options(ablation: bool) -> list[str]:
    words = [w for w in _settings("train-options") if w != "--set"]
    if ablation:
        words += [w for w in _bash('printf "%s\\n" "${ABLATION_OPTIONS[@]}"') if w != "--set"]
    return words


def test_recipe_trains_the_consep_groupings_on_the_cpu_profile():
    recipe = load_config("chrnet", "cpu", overrides=_train_options(False))
    assert recipe["model"]["groupings"] == load_config("chrnet", "consep")["model"]["groupings"]
    weights = recipe["train"]["phases"][0]["loss_weights"]
    assert weights["hrfe1_ce"] == weights["hrfe2_ce"] == 1.0


def test_ablation_sets_both_hrfe_losses_to_zero_and_nothing_else():
    full = load_config("chrnet", "cpu", overrides=_train_options(False))["train"]["phases"][0]["loss_weights"]
    ablation = load_config("chrnet", "cpu", overrides=_train_options(True))["train"]["phases"][0]["loss_weights"]
    assert {k for k in full if full[k] != ablation[k]} == {"hrfe1_ce", "hrfe2_ce"}
    assert ablation["hrfe1_ce"] == ablation["hrfe2_ce"] == 0.0


def test_recipe_infers_each_validation_patch_as_one_published_window():
    cfg = load_config("chrnet", "cpu", overrides=_train_options(False))
    family = get_family("chrnet")(cfg)
    assert score_windows(family, [(256, 256)]) == 1
    size = cfg["infer"]["input_size"]
    with torch.device("meta"):
        out = family.build_network()(torch.zeros(1, 3, size, size))
    assert {tuple(t.shape[-2:]) for t in out.values()} == {(cfg["infer"]["output_size"],) * 2} == {(256, 256)}


def test_summary_is_one_json_line_with_both_f1s(tmp_path: Path):
    pooled = {"mpq_plus": 0.41234, "f1_d": 0.7, "coverage_f1": 0.6}
    pooled |= {f"pq_plus_type{t}": 0.1 * t for t in range(1, 5)}
    pooled |= {f"f1_type{t}": 0.2 for t in range(1, 5)} | {f"coverage_f1_type{t}": 0.3 for t in range(1, 5)}
    pooled["f1_type1"] = math.nan
    means = {"pq": {"mean": 0.5}} | {f"pq_type{t}": {"mean": 0.05 * t} for t in range(1, 5)}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"pooled": pooled, "mean": means, "per_image": [{}, {}]}))
    lines = _bash('chrnet_summary "$@"', "consep_chrnet_cpu", str(path), "1500", "1790")
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["recipe"] == "consep_chrnet_cpu" and summary["images"] == "valid (2)"
    assert summary["pq"] == 0.5 and summary["mpq_plus"] == 0.4123
    assert summary["f1_d"] == 0.7 and summary["coverage_f1"] == 0.6 and summary["f1_type1"] is None
    assert [summary[f"coverage_f1_type{t}"] for t in range(1, 5)] == [0.3] * 4
    assert (summary["train_seconds"], summary["total_seconds"]) == (1500, 1790)


def test_epoch_ceiling_is_the_consep_profile_s():
    assert int(_settings("cpu-ceiling")[0]) == load_config("chrnet", "consep")["train"]["phases"][0]["epochs"]


def test_recipe_sweeps_the_h_minima_depth_over_values_the_family_accepts():
    words = _settings("process-options")
    assert words[0] == "--sweep"
    sweep = parse_sweep(words[1])
    assert sweep.key == "postproc.h" and 150 in sweep.values and min(sweep.values) > 0
    for value in sweep.values:
        CHRNetPostprocParams.from_options(load_config("chrnet", "cpu", overrides=[sweep.override(value)])["postproc"])


def test_summary_names_the_chosen_h(tmp_path: Path):
    pooled = {"mpq_plus": 0.4, "f1_d": 0.7, "coverage_f1": 0.6}
    pooled |= {f"{key}{t}": 0.1 for t in range(1, 5) for key in ("pq_plus_type", "f1_type", "coverage_f1_type")}
    means = {"pq": {"mean": 0.5}} | {f"pq_type{t}": {"mean": 0.1} for t in range(1, 5)}
    (tmp_path / "metrics.json").write_text(json.dumps({"pooled": pooled, "mean": means, "per_image": [{}]}))
    (tmp_path / "sweep.json").write_text(json.dumps({"key": "postproc.h", "best": 20}))
    summary = json.loads(_bash('chrnet_summary "$@"', "r", str(tmp_path / "metrics.json"), "1", "2")[0])
    assert summary["postproc.h"] == 20
