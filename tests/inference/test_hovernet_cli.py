"""infer.py then process.py on a real HoVer-Net checkpoint (demo profile, random weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import infer
import process
from config import load_config
from engine.checkpoint import save_checkpoint
from misc.io import write_image
from loader.synthetic import generate_tile
from models import get_family


def test_hovernet_checkpoint_through_infer_and_process(tmp_path: Path) -> None:
    cfg = load_config("hovernet", "demo", overrides=["model.nr_types=5"])
    torch.manual_seed(0)
    net = get_family("hovernet")(cfg).build_network()
    save_checkpoint(tmp_path / "best.pt", {"model": net.state_dict(), "family": "hovernet", "config": cfg, "norm_stats": None})
    write_image(tmp_path / "images" / "tile.png", generate_tile(0, (90, 70))[0])
    argv = ["--model-path", str(tmp_path / "best.pt"), "--input", str(tmp_path / "images"), "--output",
            str(tmp_path / "raw"), "--device", "cpu", "--mag", "20", "--quiet"]
    assert infer.main(argv) == 0
    with np.load(tmp_path / "raw" / "tile.npz") as raw:
        assert {k: raw[k].shape for k in ("np_prob", "hv", "tp_prob")} == {
            "np_prob": (90, 70, 1), "hv": (90, 70, 2), "tp_prob": (90, 70, 5)}
        assert str(raw["family"]) == "hovernet" and int(raw["mag"]) == 20
    assert process.main(["--input", str(tmp_path / "raw"), "--output", str(tmp_path / "out"), "--quiet"]) == 0
    assert json.loads((tmp_path / "out" / "json" / "tile.json").read_text())["mag"] == 20
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["composition.csv", "geojson", "json", "mat", "png"]
