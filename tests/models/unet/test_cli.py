"""The demo profile through the three scripts: train.py (one step), infer.py, process.py --gt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import infer
import process
from loader.synthetic import write_dataset
from tests.engine.helpers import run_train

TINY_DEMO = [
    "--set", "infer.input_size=64", "--set", "infer.output_size=64", "--set", "infer.keep_margin=8",
    "--set", "data.synthetic={n_train: 2, n_val: 1, size: 64, seed: 0}", "--set", "data.patch_size=64",
    "--set", "train.phases.0.batch_size=2", "--set", "train.phases.0.epochs=1", "--set", "data.resample=0.5",
]


def test_demo_trains_infers_and_scores(tmp_path: Path) -> None:
    done = run_train("--model", "unet", "--profile", "demo", "--data", "synthetic", "--out", tmp_path / "run",
                     *TINY_DEMO, plugin=False)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 2 and "train_tp_focal" in metrics[0] and "val_pq" in metrics[0]
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    assert checkpoint.is_file()

    write_dataset(tmp_path / "tiles", 2, seed=7, shape=(72, 80))
    assert infer.main(["--model-path", str(checkpoint), "--input", str(tmp_path / "tiles" / "images"),
                       "--output", str(tmp_path / "raw"), "--device", "cpu", "--quiet"]) == 0
    with np.load(sorted((tmp_path / "raw").glob("*.npz"))[0]) as raw:
        assert str(raw["family"]) == "unet" and raw["tp_prob"].shape == (72, 80, 4)
        assert np.abs(raw["hv"]).max() <= 1.0
    assert process.main(["--input", str(tmp_path / "raw"), "--output", str(tmp_path / "out"),
                         "--gt", f"folder:{tmp_path / 'tiles'}", "--count-crop", "56", "--quiet"]) == 0
    scores = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(scores["per_image"]) == 2 and {"mpq_plus", "r2"} <= set(scores["pooled"])
    assert scores["options"]["count_crop"] == 56
    header = (tmp_path / "out" / "composition.csv").read_text().splitlines()[0]
    assert header.startswith("image,type1") and header.endswith(",total")
