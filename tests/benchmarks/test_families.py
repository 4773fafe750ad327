"""``python -m benchmarks.families`` end to end on tiny CoNSeP-like data (two families, demo
profile, one epoch), its table and plots against process.py's metrics.json, its resume, and
the score paths and recipe settings it reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks.family_report import best_values, chart_groups, markdown
from benchmarks.families import read_metrics, read_scores
from benchmarks.recipes.settings import SETTINGS, field_words, load_settings
from loader.synthetic import generate_tile
from misc.errors import UserError
from misc.io import write_image
from tests.conftest import REPO_ROOT

NAMES = {"train": ["train_1_000", "train_1_001", "train_2_000", "train_2_001"], "valid": ["train_3_000", "train_3_001"]}


def _tiny_consep(root: Path) -> Path:
    """A CoNSeP-layout folder of six 256 px synthetic patches and a split file; returns the split."""
    folder = root / "data" / "consep"
    for sub in ("images", "inst", "types"):
        (folder / sub).mkdir(parents=True)
    for seed, name in enumerate(NAMES["train"] + NAMES["valid"]):
        image, inst_map, type_map = generate_tile(seed, (256, 256))
        write_image(folder / "images" / f"{name}.jpg", image)
        np.save(folder / "inst" / f"{name}.npy", inst_map.astype(np.int32))
        write_image(folder / "types" / f"{name}.png", type_map.astype(np.uint8))
    split = root / "split.json"
    split.write_text(json.dumps({"kind": "folder", "parts": NAMES}))
    return split


def _settings(root: Path, split: Path) -> Path:
    """recipes.yaml with the tiny split and the typed CoNSeP task only."""
    raw = yaml.safe_load(SETTINGS.read_text())
    raw["datasets"]["consep"]["split"] = str(split)
    raw["tasks"] = {"consep_typed": raw["tasks"]["consep_typed"]}
    path = root / "settings.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _run(root: Path, settings: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "benchmarks.families", "--data", str(root / "data"), "--out", str(root / "out"),
               "--families", "hovernet", "unet", "--profile", "demo", "--epochs", "1", "--threads", "2",
               "--device", "cpu", "--settings", str(settings)]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})


@pytest.mark.slow
def test_two_families_table_and_plots_hold_process_scores(tmp_path: Path) -> None:
    settings = _settings(tmp_path, _tiny_consep(tmp_path))
    done = _run(tmp_path, settings)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    rows = results["tasks"]["consep_typed"]["rows"]
    assert [row["family"] for row in rows] == ["hovernet", "unet"] and all(row["status"] == "done" for row in rows)
    table = (out / "results.md").read_text()
    for row in rows:
        metrics = json.loads((out / row["metrics_file"]).read_text())
        assert row["scores"]["PQ"] == pytest.approx(metrics["mean"]["pq"]["mean"])
        assert row["scores"]["mPQ+"] == metrics["pooled"]["mpq_plus"] and row["scores"]["R2"] == metrics["pooled"]["r2"]
        assert row["scores"]["PQ type 1"] == metrics["mean"]["pq_type1"]["mean"]
        assert row["scores"]["F1 type 3"] == metrics["pooled"]["f1_type3"]
        assert f"{row['scores']['PQ']:.3f}" in table and f"{row['parameters']:,}" in table
        assert row["parameters"] > 0 and row["train_minutes"] > 0 and row["infer_seconds_per_1000x1000"] > 0
        assert row["peak_memory_mb"] > 50
    plots = {path.name for path in (out / "plots").iterdir()}
    assert {"consep_typed_pq.png", "consep_typed_pq_type.png", "consep_typed_parameters.png",
            "consep_typed_overlays.png"} <= plots
    assert all((out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in plots)
    assert "[1/2] consep_typed hovernet" in done.stderr and "ETA" in done.stderr

    unet = out / "consep_typed" / "consep_unet"  # as if interrupted after infer.py: only process.py runs again
    steps = json.loads((unet / "steps.json").read_text())
    (unet / "steps.json").write_text(json.dumps({key: steps[key] for key in ("train", "infer")}))
    (unet / "row.json").unlink()
    commands = (unet / "log.txt").read_text().count("$ ")
    again = _run(tmp_path, settings)
    assert again.returncode == 0 and again.stderr.count("done earlier") == 1 and "(resuming)" in again.stderr
    log = (unet / "log.txt").read_text()
    assert log.count("$ ") == commands + 1 and log.split("$ ")[-1].split()[1] == "process.py"
    assert json.loads((out / "results.json").read_text())["tasks"]["consep_typed"]["rows"] == rows


def test_read_scores_expands_stars_and_keeps_nan_as_none() -> None:
    metrics = {"mean": {"pq": {"mean": 0.5}, "pq_type1": {"mean": 0.25}, "pq_type2": {"mean": None}},
               "pooled": {"gradcam:miou": 0.2, "crf_miou": 0.4, "miou": 0.4, "fiou": 0.9}}
    scores = read_scores(metrics, {"PQ": "mean.pq.mean", "PQ type": "mean.pq_type*.mean", "mIoU": "pooled.*miou*"})
    assert scores == {"PQ": 0.5, "PQ type 1": 0.25, "PQ type 2": None, "mIoU gradcam": 0.2, "mIoU crf": 0.4, "mIoU": 0.4}


def test_score_command_lines_are_read_by_stage(tmp_path: Path) -> None:
    lines = tmp_path / "scores.jsonl"
    lines.write_text('{"stage": "gradcam", "miou": 0.1, "iou": {"0": 0.5}}\n{"stage": "crf", "miou": 0.3}\n')
    scores = read_scores(read_metrics(lines), {"mIoU": "stages.*.miou"})
    assert scores == {"mIoU gradcam": 0.1, "mIoU crf": 0.3}


def test_best_value_per_column_is_bold() -> None:
    rows = [{"family": "a", "profile": "cpu", "status": "done", "scores": {"PQ": 0.5}, "parameters": 10, "train_minutes": 2.0,
             "infer_seconds_per_1000x1000": 1.0, "peak_memory_mb": 300.0},
            {"family": "b", "profile": "cpu", "status": "done", "scores": {"PQ": 0.6}, "parameters": 20, "train_minutes": 1.0,
             "infer_seconds_per_1000x1000": None, "peak_memory_mb": 200.0},
            {"family": "c", "profile": "cpu", "status": "failed", "error": "train: error: boom (exit 2)"}]
    task = {"title": "t", "per": "image", "rows": rows}
    assert best_values(rows, ["PQ"], ["parameters", "train_minutes"]) == {"PQ": 0.6, "parameters": 10, "train_minutes": 1.0}
    text = markdown({"command": "c", "machine": {"cpu_cores": 2}, "tasks": {"t": task}})
    assert "| a | cpu | 0.500 | **10** | 2.0 | **1.00** | 300 |" in text
    assert "| b | cpu | **0.600** | 20 | **1.0** | – | **200** |" in text
    assert "| c | cpu | failed: train: error: boom (exit 2) |" in text


def test_columns_of_one_score_share_a_chart() -> None:
    rows = [{"status": "done", "scores": {"PQ": 0.5, "PQ type 1": 0.1, "PQ type 2": 0.2, "mIoU gradcam": 0.3, "mIoU crf": 0.4}}]
    assert chart_groups(rows, ["PQ", "PQ type", "mIoU"]) == {
        "PQ": ["PQ"], "PQ type": ["PQ type 1", "PQ type 2"], "mIoU": ["mIoU gradcam", "mIoU crf"]}


def test_settings_are_the_shell_recipes() -> None:
    settings = load_settings()
    assert field_words(settings.recipes["consep_unet"], "train-options") == ["--set", "model.nr_types=5", "--set", "infer.keep_margin=0"]
    assert field_words(settings.recipes["monuseg_fullnet"], "win") == ["250"]
    chrnet = settings.recipes["consep_chrnet"]
    assert chrnet.overrides("cpu", planned=True)[-1] == "train.phases.0.epochs=10"
    assert "train.phases.0.epochs=10" not in chrnet.overrides("paper", planned=True)
    words = subprocess.run([sys.executable, "-m", "benchmarks.recipes.settings", "consep_hovernet", "train-options"],
                           cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert words[:2] == ["--set", "model.nr_types=5"] and len(words) == 12


def test_bad_settings_and_names_are_one_line(tmp_path: Path) -> None:
    raw = yaml.safe_load(SETTINGS.read_text())
    raw["tasks"]["consep_typed"]["recipes"].append("nosuch")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="names recipes \\['nosuch'\\]"):
        load_settings(bad)
    done = subprocess.run([sys.executable, "-m", "benchmarks.families", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                           "--families", "nosuch"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: --families ['nosuch']")
