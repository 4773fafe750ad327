"""infer.py with several checkpoints: averaged maps, recorded members, refused mixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import infer
import process
from config import load_config
from engine.checkpoint import save_checkpoint
from inference.rawfile import RawRef
from loader.synthetic import generate_tile
from misc.io import write_image
from models import get_family

TINY_UNET = ["infer.input_size=64", "infer.output_size=64", "infer.keep_margin=8", "infer.tta=true"]


def checkpoint(folder: Path, name: str, family: str, overrides: list[str], seed: int) -> Path:
    """A checkpoint as train.py writes it, with random weights."""
    cfg = load_config(family, "demo", overrides=overrides)
    torch.manual_seed(seed)
    net = get_family(family)(cfg).build_network()
    path = folder / f"{name}.pt"
    save_checkpoint(path, {"model": net.state_dict(), "family": family, "config": cfg, "norm_stats": None})
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    write_image(folder / "tile.png", generate_tile(1, (72, 80))[0])
    return folder


def predict(tmp: Path, images: Path, *checkpoints: Path, out: str) -> RawRef:
    assert infer.main(["--model-path", *map(str, checkpoints), "--input", str(images), "--output",
                       str(tmp / out), "--device", "cpu", "--quiet"]) == 0
    return RawRef(tmp / out / "tile.npz")


def test_ensemble_averages_the_members_maps_and_records_them(tmp_path, images):
    unet_a = checkpoint(tmp_path, "unet_a", "unet", TINY_UNET, 0)
    hovernet = checkpoint(tmp_path, "hovernet", "hovernet", ["model.nr_types=4"], 1)
    both = predict(tmp_path, images, unet_a, hovernet, out="both").load()
    alone = [predict(tmp_path, images, path, out=path.stem).load() for path in (unet_a, hovernet)]
    assert sorted(both.maps) == ["hv", "np_prob", "tp_prob"]
    for name in both.maps:
        np.testing.assert_allclose(both.maps[name], (alone[0].maps[name] + alone[1].maps[name]) / 2, atol=1e-5)
    assert both.members == [{"family": "unet", "checkpoint": str(unet_a)}, {"family": "hovernet", "checkpoint": str(hovernet)}]
    assert both.family == "unet" and alone[0].members == []
    assert process.main(["--input", str(tmp_path / "both"), "--output", str(tmp_path / "out"), "--quiet"]) == 0


def test_members_with_other_maps_are_one_error_naming_both(tmp_path, images, capsys):
    unet = checkpoint(tmp_path, "unet", "unet", TINY_UNET, 0)
    hovernet = checkpoint(tmp_path, "hovernet5", "hovernet", ["model.nr_types=5"], 1)
    with pytest.raises(SystemExit) as stop:
        infer.main(["--model-path", str(unet), str(hovernet), "--input", str(images), "--output",
                    str(tmp_path / "raw"), "--device", "cpu", "--quiet"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert stop.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: cannot ensemble")
    assert str(unet) in lines[0] and str(hovernet) in lines[0] and "'tp_prob': 5" in lines[0]
    assert not (tmp_path / "raw" / "tile.npz").exists()


def test_ensembles_write_npz_only(tmp_path, images, capsys):
    with pytest.raises(SystemExit) as stop:
        infer.main(["--model-path", "a.pt", "b.pt", "--input", str(images), "--output", str(tmp_path),
                    "--format", "h5", "--quiet"])
    assert stop.value.code == 2 and "an ensemble of 2 checkpoints writes npz" in capsys.readouterr().err
