"""The failure matrix of ``extract_patches.py`` (no family involved): an unreadable image, a
missing or empty dataset folder and a label map of another shape are one ``error:`` line
naming the file (exit 2), with nothing half-written; RGBA and 16-bit images give the patches
of the RGB image; non-contiguous instance ids and a map without background are extracted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

import extract_patches
from misc.io import read_image, read_label, write_label
from tests.failures.conftest import SIDE, png_bytes, run_main, tiles

WINDOW = ["--win", "32", "--step", "32", "--no-progress"]


def _dataset(root: Path) -> tuple[Path, Path, Path]:
    """A two-tile ``folder`` dataset; returns the folder, the second image and its label map."""
    tiles(root, n=2)
    return root, root / "images" / "tile_0001.png", root / "inst" / "tile_0001.npy"


def _extract(root: Path, out: Path):
    return run_main(extract_patches.main, ["folder", root, out, *WINDOW])


def _patches(out: Path) -> dict[str, np.ndarray]:
    """Patch file name -> its (h, w, 5) array [RGB, instances, types]."""
    return {p.name: np.load(p) for p in sorted((out / "all").glob("*.npy"))}


@pytest.mark.parametrize("case", ["corrupt image", "truncated image", "greyscale", "label of another shape"])
def test_bad_file_is_one_error_line_and_nothing_half_written(case: str, tmp_path: Path) -> None:
    root, image, label = _dataset(tmp_path / "data")
    good = read_image(image)
    culprit = label if case == "label of another shape" else image
    if case == "corrupt image":
        image.write_bytes(b"not an image at all")
    elif case == "truncated image":
        image.write_bytes(png_bytes(good)[:300])
    elif case == "greyscale":
        image.write_bytes(png_bytes(good[..., 1]))
    else:
        write_label(label, np.zeros((SIDE - 5, SIDE), np.int32))
    assert str(culprit) in _extract(root, tmp_path / "out").one_error()
    assert not [p for p in tmp_path.joinpath("out").rglob("*") if p.name.startswith(".") or ".tmp" in p.name]


@pytest.mark.parametrize("case", ["missing folder", "empty folder"])
def test_missing_or_empty_dataset_is_one_error_line(case: str, tmp_path: Path) -> None:
    root = tmp_path / "data"
    if case == "empty folder":
        (root / "images").mkdir(parents=True)
        (root / "inst").mkdir()
    line = _extract(root, tmp_path / "out").one_error()
    assert str(root) in line


@pytest.mark.parametrize("case", ["RGBA", "16-bit"])
def test_rgba_and_16_bit_images_give_the_patches_of_the_rgb_image(case: str, tmp_path: Path) -> None:
    root, image, _ = _dataset(tmp_path / "data")
    assert _extract(root, tmp_path / "rgb").code == 0
    good = read_image(image)
    image.unlink()
    if case == "RGBA":
        image.write_bytes(png_bytes(np.dstack([good, np.full(good.shape[:2], 255, np.uint8)])))
    else:
        tifffile.imwrite(image.with_suffix(".tif"), good.astype(np.uint16) * 257, photometric="rgb")
    outcome = _extract(root, tmp_path / "other")
    assert outcome.code == 0, outcome.text
    rgb, other = _patches(tmp_path / "rgb"), _patches(tmp_path / "other")
    assert rgb.keys() == other.keys() and all(np.array_equal(rgb[k], other[k]) for k in rgb)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label maps split the pixels into the same regions (ids aside; 0 stays 0)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1] and bool(((a == 0) == (b == 0)).all())


@pytest.mark.parametrize("case", ["non-contiguous ids", "no background pixel"])
def test_unusual_instance_maps_are_extracted(case: str, tmp_path: Path) -> None:
    root, _, label = _dataset(tmp_path / "data")
    assert _extract(root, tmp_path / "plain").code == 0
    inst = read_label(label)
    if case == "non-contiguous ids":
        ids = np.unique(inst[inst > 0])
        lookup = np.zeros(inst.max() + 1, np.int32)
        lookup[ids] = 1000 + 37 * np.arange(len(ids))[::-1]
        changed = lookup[inst]
    else:
        changed = np.repeat(np.arange(1, 5, dtype=np.int32), SIDE * SIDE // 4).reshape(SIDE, SIDE)
    write_label(label, changed)
    outcome = _extract(root, tmp_path / "changed")
    assert outcome.code == 0, outcome.text
    plain, other = _patches(tmp_path / "plain"), _patches(tmp_path / "changed")
    assert plain.keys() == other.keys()
    name = sorted(n for n in other if "tile_0001" in n)[0]
    assert np.array_equal(plain[name][..., :3], other[name][..., :3])
    if case == "non-contiguous ids":
        assert _same_partition(plain[name][..., 3], other[name][..., 3])
    else:
        assert (other[name][..., 3] > 0).all()
