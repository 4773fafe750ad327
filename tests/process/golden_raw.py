"""Deterministic raw prediction files of the instance families, without a network.

Each family gets one raw ``.npz`` (the layout ``infer.py`` writes, see :mod:`inference.rawfile`)
whose maps are made from a synthetic tile's true nuclei (:func:`loader.synthetic.generate_tile`):
blurred, so that post-processing has real work (thresholds, watershed, Sobel edges), and
nothing in them depends on a trained network or on floating-point summation order.

``python -m tests.process.golden_raw OUT`` writes them to ``OUT`` (how the golden digests of
``test_instance_golden.py`` were made from another checkout's ``process.py``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
from skimage.segmentation import find_boundaries

from loader.synthetic import generate_tile
from models import create_family
from models.chrnet.targets import marker_map
from models.hovernet.targets import hv_map

SHAPE = (160, 192)
#: family -> (``--set`` overrides of its default profile, tile seed).
FAMILIES: dict[str, tuple[tuple[str, ...], int]] = {
    "hovernet": (("model.nr_types=4",), 11),
    "unet": (("model.nr_types=4", "infer.mag=40"), 12),
    "chrnet": (("model.nr_types=4",), 13),
    "fullnet": ((), 14),
}


def _blur(values: np.ndarray) -> np.ndarray:
    """(H, W, C) float32 Gaussian blur (sigma 1.5 px) of each channel, borders reflected."""
    out = cv2.GaussianBlur(np.ascontiguousarray(values, np.float32), (0, 0), 1.5, borderType=cv2.BORDER_REFLECT)
    return out.reshape(values.shape)


def _softened(one_hot: np.ndarray) -> np.ndarray:
    """Blurred (H, W, C) one-hot maps renormalised to sum to 1 per pixel."""
    soft = _blur(one_hot) + 1e-3
    return (soft / soft.sum(axis=2, keepdims=True)).astype(np.float32)


def family_maps(family: str, inst_map: np.ndarray, type_map: np.ndarray, nr_types: int) -> dict[str, np.ndarray]:
    """The named (H, W, C) float32 maps ``family``'s ``predict`` would give for a perfect network."""
    foreground = (inst_map > 0).astype(np.float32)
    np_prob = np.clip(_blur(foreground[..., None]), 0.0, 1.0)
    types = _softened((type_map[..., None] == np.arange(max(nr_types, 1))).astype(np.float32))
    if family in ("hovernet", "unet"):
        return {"np_prob": np_prob, "hv": np.moveaxis(hv_map(inst_map), 0, -1), "tp_prob": types}
    if family == "chrnet":
        return {"np_prob": np_prob, "marker": np.clip(_blur(marker_map(inst_map)[..., None]), 0, 1), "tp_prob": types}
    contour = find_boundaries(inst_map, mode="inner")
    inside = (inst_map > 0) & ~contour
    classes = np.stack([~(inst_map > 0), inside, contour], axis=-1).astype(np.float32)
    return {"prob": _softened(classes)}


def write_raw_files(folder: Path) -> list[Path]:
    """One raw ``.npz`` per family of :data:`FAMILIES` in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (overrides, seed) in FAMILIES.items():
        family = create_family(name, overrides=overrides)
        image, inst_map, type_map = generate_tile(seed, SHAPE)
        maps = family_maps(name, inst_map, type_map, int(family.cfg["model"].get("nr_types") or 0))
        meta = {"family": np.array(name), "config": np.array(json.dumps(family.cfg, sort_keys=True)),
                "mag": np.array(int(family.cfg["infer"]["mag"])), "source": np.array(f"{name}.png"), "image": image}
        path = folder / f"{name}.npz"
        np.savez(path, **maps, **meta)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_raw_files(Path(sys.argv[1])):
        print(written)
