"""HoVer-Net post-processing tile by tile (margin, nuclei kept by the tile holding their centroid)
against the whole image, on exact maps of a synthetic slide's known nuclei.

HoVer-Net's post-processing min-max normalises the Sobel maps over the image it is given, so
a tile whose strongest gradients are weaker than the whole image's splits a few nuclei
differently (with 256 px tiles about 1 % of them); at the pipeline's default 1024 px tiles the
tiled result matches the whole image."""

from __future__ import annotations

import math

import numpy as np
import pytest

from config import load_config
from inference.slide import overlay_colours, process_tile
from loader.synthetic_slide import SyntheticSlide
from metrics import pq_counts
from models import get_family
from models.hovernet.targets import hv_map
from tests.inference.slide_helpers import fill_contours

SHAPE = (1536, 1280)


def _exact_maps() -> dict[str, np.ndarray]:
    slide = SyntheticSlide(SHAPE, np.ones((6, 5), bool), cell=256, mpp=0.25, pool_size=7)
    inst, types = slide.labels(0, 0, *SHAPE)
    _, inst = np.unique(inst, return_inverse=True)
    inst = inst.reshape(SHAPE).astype(np.int32)
    tp = np.eye(4, dtype=np.float32)[types]
    return {"np_prob": (inst > 0).astype(np.float32)[..., None], "hv": np.moveaxis(hv_map(inst), 0, -1), "tp_prob": tp}


@pytest.mark.parametrize("tile,margin", [(1024, 96)])  # the pipeline default
def test_tiles_equal_the_whole_image(tile: int, margin: int) -> None:
    family = get_family("hovernet")(load_config("hovernet", "demo", overrides=["model.nr_types=4"]))
    maps = _exact_maps()
    whole = family.postprocess(maps, mag=40)
    colours = overlay_colours(None, 4)
    contours, centroids = [], []
    for row in range(math.ceil(SHAPE[0] / tile)):
        for col in range(math.ceil(SHAPE[1] / tile)):
            core = (row * tile, min(SHAPE[0], (row + 1) * tile), col * tile, min(SHAPE[1], (col + 1) * tile))
            ext = (max(0, core[0] - margin), min(SHAPE[0], core[1] + margin),
                   max(0, core[2] - margin), min(SHAPE[1], core[3] + margin))
            raw = {name: value[ext[0] : ext[1], ext[2] : ext[3]] for name, value in maps.items()}
            arrays = process_tile(family, raw, ext, core, 40.0, colours, 8)
            offsets = arrays["contour_offset"]
            contours += [arrays["contour"][offsets[k] : offsets[k + 1]] for k in range(len(offsets) - 1)]
            centroids += arrays["centroid"].tolist()
    reference = fill_contours([np.asarray(e["contour"]) for e in whole["inst_info"].values()], SHAPE)
    tiled = fill_contours(contours, SHAPE)
    counts = pq_counts(reference, tiled)
    pq = counts.iou_sum / (counts.tp + 0.5 * (counts.fp + counts.fn))
    assert len(whole["inst_info"]) > 1000
    assert pq >= 0.99, counts
    assert len(centroids) == len({tuple(np.round(c, 3)) for c in centroids})  # none duplicated
    assert abs(len(contours) - len(whole["inst_info"])) <= 0.01 * len(contours)


def test_reinhard_with_fixed_statistics_equals_the_whole_image_transfer() -> None:
    from inference.slide import reinhard_transform
    from loader.colour import lab_statistics, reinhard_normalise
    from loader.synthetic import generate_tile

    image = generate_tile(3, (96, 128))[0]
    target = {"mean": [60.0, 20.0, -10.0], "std": [12.0, 6.0, 5.0]}
    windows = np.stack([image[:, :64], image[:, 64:]])
    transformed = reinhard_transform(lab_statistics(image), target)(windows)
    expected = reinhard_normalise(image, target)
    assert np.abs(np.concatenate(list(transformed), axis=1).astype(int) - expected).max() <= 1
