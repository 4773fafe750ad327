"""``python -m metrics`` round trips and bad input, and the ``python -m metrics.demo`` run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from metrics import instance_stats
from metrics.demo import main as demo_main
from misc.io import write_label

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metrics", *args], cwd=REPO, capture_output=True, text=True)


def sample_maps() -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Two small images as (true_inst, true_type, pred_inst, pred_type)."""
    t1 = np.zeros((16, 16), np.int32)
    t1[1:5, 1:5], t1[8:12, 8:14] = 3, 9
    p1 = np.zeros((16, 16), np.int32)
    p1[1:5, 2:5], p1[8:12, 8:12], p1[14:16, 0:2] = 1, 2, 4
    t2 = np.zeros((16, 16), np.int32)
    t2[2:6, 2:6] = 1
    p2 = np.zeros((16, 16), np.int32)
    type_t1 = np.where(t1 == 3, 1, np.where(t1 == 9, 2, 0))
    type_p1 = np.where(p1 == 1, 1, np.where(p1 > 0, 2, 0))
    return [(t1, type_t1, p1, type_p1), (t2, (t2 > 0).astype(np.int32), p2, p2)]


def write_pairs(tmp_path: Path, fmt: str) -> tuple[Path, Path]:
    true_dir, pred_dir = tmp_path / "true", tmp_path / "pred"
    true_dir.mkdir()
    pred_dir.mkdir()
    for k, (ti, tt, pi, pt) in enumerate(sample_maps()):
        for folder, inst, types in ((true_dir, ti, tt), (pred_dir, pi, pt)):
            if fmt == "npy":
                np.save(folder / f"img{k}.npy", np.stack([inst, types], axis=-1))
            elif fmt == "mat":
                scipy.io.savemat(folder / f"img{k}.mat", {"inst_map": inst, "type_map": types})
            else:
                write_label(folder / f"img{k}.{fmt}", inst)
    return true_dir, pred_dir


@pytest.mark.parametrize("fmt", ["npy", "mat", "png", "tif"])
def test_round_trip_instance_metrics(tmp_path, fmt):
    true_dir, pred_dir = write_pairs(tmp_path, fmt)
    out = tmp_path / "scores.csv"
    proc = run_cli("--true", str(true_dir), "--pred", str(pred_dir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "n_nan" in proc.stdout
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == ["img0", "img1", "mean", "n_nan"]
    t1, _, p1, _ = sample_maps()[0]
    assert float(rows[0]["pq"]) == pytest.approx(instance_stats(t1, p1)["pq"])
    assert float(rows[1]["pq"]) == 0.0  # truth present, prediction empty
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["mean"]["pq"]["mean"] == pytest.approx(instance_stats(t1, p1)["pq"] / 2)
    assert report["mean"]["pq"]["n_nan"] == 0


def test_round_trip_with_types_and_gland(tmp_path):
    true_dir, pred_dir = write_pairs(tmp_path, "npy")
    out = tmp_path / "typed.csv"
    proc = run_cli("--true", str(true_dir), "--pred", str(pred_dir), "--types", "2", "--gland",
                   "--count-crop", "8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    pooled = report["pooled"]
    # image 0: t(3)~p(1) IoU 12/16 with type 1 both; t(9) vs p(2) IoU 16/24 type 2; p(4) FP type 2;
    # image 1: t(1) FN type 1. Class 1: TP 1, FN 1 -> (1/1.5)(0.75); class 2: TP 1, FP 1 -> (1/1.5)(2/3)
    assert pooled["mpq_plus"] == pytest.approx(((0.75 + 2 / 3) / 1.5) / 2)
    assert pooled["f1_d"] == pytest.approx(4 / (4 + 1 + 1))
    assert pooled["acc_type"] == 1.0
    assert set(report["per_image"][0]) >= {"pq_type1", "pq_type2", "gland_f1", "gland_dice_obj"}
    assert "r2" in pooled


@pytest.mark.parametrize("problem", ["missing_pair", "shape_mismatch", "unreadable", "types_without_channel"])
def test_bad_input_prints_one_line_and_exits_2(tmp_path, problem):
    true_dir, pred_dir = write_pairs(tmp_path, "npy")
    extra: list[str] = []
    if problem == "missing_pair":
        (pred_dir / "img1.npy").unlink()
    elif problem == "shape_mismatch":
        np.save(pred_dir / "img1.npy", np.zeros((8, 8), np.int32))
    elif problem == "unreadable":
        (pred_dir / "img1.npy").write_bytes(b"not a numpy file")
    else:
        np.save(pred_dir / "img1.npy", np.zeros((16, 16), np.int32))
        extra = ["--types", "2"]
    proc = run_cli("--true", str(true_dir), "--pred", str(pred_dir), "--out", str(tmp_path / "x.csv"), *extra)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "img1" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.csv").exists()


def test_demo_prints_table_and_final_json(capsys):
    assert demo_main(["--tiles", "1", "--size", "128"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    final = json.loads(lines[-1])
    assert final["results"]["identity"]["pq"] == 1.0
    assert final["results"]["flip_types"]["pq"] == 1.0
    assert final["results"]["flip_types"]["acc_type"] < 1.0
    assert final["results"]["merge_touching"]["aji"] < 1.0
