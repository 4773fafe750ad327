"""Synthetic tissue tiles: determinism, labels from the pixel truth, appearance, files."""

from __future__ import annotations

import numpy as np
import pytest

import loader
from loader.synthetic_tissue import PATCH_CLASSES, TISSUE_TYPES, generate_tissue_tile, patch_labels, write_dataset
from misc.errors import UserError
from loader.synthetic import tile_seed
from models.histosegnet.classes import read_class_info


def test_deterministic_and_labels_follow_the_truth() -> None:
    a, b = generate_tissue_tile(7, (96, 128)), generate_tissue_tile(7, (96, 128))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.tissue_map, b.tissue_map)
    assert a.image.shape == (96, 128, 3) and a.image.dtype == np.uint8 and a.tissue_map.dtype == np.int32
    counts = np.bincount(a.tissue_map.ravel(), minlength=5)[1:] / a.tissue_map.size
    assert np.array_equal(a.labels, (counts >= 0.02).astype(np.int64))
    assert not np.array_equal(a.image, generate_tissue_tile(8, (96, 128)).image)


def test_types_look_as_described() -> None:
    tiles = [generate_tissue_tile(seed, (96, 96)) for seed in range(12)]
    brightness = {k: [t.image[t.tissue_map == k].mean() for t in tiles if (t.tissue_map == k).sum() > 200] for k in TISSUE_TYPES}
    assert all(brightness[k] for k in TISSUE_TYPES)  # every type occurs in a dozen tiles
    assert min(brightness[0]) > 240 and min(brightness[4]) > 235  # glass and fat are bright
    assert max(brightness[3]) < min(brightness[0]) - 40  # lymphoid is dark
    labels = np.array([t.labels for t in tiles])
    assert 0 < labels.mean() < 1 and (labels.sum(1) >= 1).all()


def test_class_info_file_matches_the_types() -> None:
    info = read_class_info("synthetic_tissue")
    assert info.names == tuple(name for name, _ in TISSUE_TYPES.values())
    assert info.colours == tuple(colour for _, colour in TISSUE_TYPES.values())
    assert PATCH_CLASSES == info.names[1:]


def test_written_dataset_reads_back_as_patch_labels(tmp_path) -> None:
    write_dataset(tmp_path, n=3, seed=1, size=64)
    dataset = loader.read_dataset("patch_labels", tmp_path)
    assert len(dataset) == 3 and dataset[0].class_names == PATCH_CLASSES
    assert np.array_equal(dataset[1].labels, generate_tissue_tile(tile_seed(1, 1), (64, 64)).labels)


def test_bad_arguments() -> None:
    with pytest.raises(UserError, match="tile shape"):
        generate_tissue_tile(0, (8, 8))
    with pytest.raises(UserError, match="min_fraction"):
        generate_tissue_tile(0, (64, 64), min_fraction=1.5)
    assert patch_labels(np.zeros((4, 4), np.int32)).sum() == 0


def test_command_line(tmp_path, capsys) -> None:
    from loader.synthetic_tissue import main

    assert main([str(tmp_path / "out"), "--n", "2", "--size", "48"]) == 0
    assert (tmp_path / "out" / "labels.csv").read_text().splitlines()[0] == "name,epithelium,stroma,lymphoid,adipose"
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "bad"), "--n", "0"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: --n 0")
