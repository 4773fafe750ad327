"""HistoSegNet inference on whole images: published tiling, stitching, the three stages, thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import config
from loader.synthetic_tissue import generate_tissue_tile
from misc.errors import UserError
from models import get_family
from models.histosegnet.pipeline import (
    STAGES,
    calibrate_thresholds,
    cut_tiles,
    score_stages,
    segment_image,
    stitch_tiles,
    tile_starts,
)


def tiny_family(**model: object):
    cfg = config.load_config("histosegnet", "demo")
    cfg["model"].update(width=0.0625, **model)
    family = get_family("histosegnet")(cfg)
    family.norm_stats = {"mean": [200.0], "std": [40.0]}
    torch.manual_seed(0)
    return family, family.build_network().eval()


def test_tile_starts_as_published() -> None:
    assert tile_starts(224, 224) == (0,)
    assert tile_starts(500, 224) == (0, 138, 276)  # overlap floor((3 * 224 - 500) / 2) = 86
    assert tile_starts(448, 224) == (0, 224)


@pytest.mark.parametrize("shape, down_fac", [((300, 500), 1.0), ((100, 150), 1.0), ((600, 460), 1.958)])
def test_cut_then_stitch_returns_the_image(shape: tuple[int, int], down_fac: float) -> None:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    image = np.stack([rows % 256, cols % 256, (rows + cols) // 4 % 256], -1).astype(np.uint8)
    smooth = np.stack([rows * 0.3, cols * 0.3, rows * 0.1 + cols * 0.2], -1).astype(np.uint8)
    for picture, tolerance in ((image, 0.0), (smooth, 1.5)):
        tiles, layout = cut_tiles(picture, 224, down_fac)
        assert tiles.shape[1:] == (224, 224, 3)
        stitched = stitch_tiles(torch.from_numpy(tiles).permute(0, 3, 1, 2).float(), layout)
        assert stitched.shape == (3, *shape)
        if down_fac == 1.0 or tolerance:
            error = (stitched.permute(1, 2, 0).numpy() - picture).__abs__()
            assert (error.mean() if tolerance else error.max()) <= tolerance


def test_three_stages_for_every_pass() -> None:
    family, net = tiny_family()
    net.thresholds.zero_()
    tile = generate_tissue_tile(3, (160, 250))
    results = segment_image(family, net, tile.image, batch_size=2)
    assert list(results) == ["tissue"]
    result = results["tissue"]
    assert result.names == ("background", "epithelium", "stroma", "lymphoid", "adipose")
    for stage in STAGES:
        labels = result.labels[stage]
        assert labels.shape == (160, 250) and labels.min() >= 0 and labels.max() < 5
    assert result.raw.shape == result.adjusted.shape == (5, 160, 250)
    assert float(result.raw[0].max()) == 0.0 and (result.labels["gradcam"] != 0).all()  # background: not a Grad-CAM class
    scores = score_stages([result], [tile.tissue_map])
    assert set(scores) == set(STAGES) and all(0.0 <= s["miou"] <= 1.0 for s in scores.values())


def test_paper_passes_run_morph_then_func_on_adp_classes() -> None:
    cfg = config.load_config("histosegnet")
    cfg["model"]["width"] = 0.0625
    family = get_family("histosegnet")(cfg)
    family.norm_stats = {"mean": [193.09203], "std": [56.450138]}
    net = family.build_network().eval()
    net.thresholds.fill_(0.0)
    image = np.random.default_rng(0).integers(150, 255, (224, 224, 3), dtype=np.uint8)
    results = segment_image(family, net, image, mpp=1.214)
    assert list(results) == ["morph", "func"]
    assert results["func"].names == ("Background", "Other", "G.O", "G.N", "T")
    assert results["morph"].labels["crf"].shape == (224, 224)


def test_thresholds_calibrated_on_validation_patches() -> None:
    family, net = tiny_family()
    tiles = [generate_tissue_tile(seed, (64, 64)) for seed in range(10)]
    samples = [{"image": t.image, "labels": t.labels} for t in tiles]
    thresholds, kept = calibrate_thresholds(family, net, samples)
    assert torch.allclose(net.thresholds, torch.from_numpy(thresholds))
    labels = np.array([t.labels for t in tiles])
    assert kept == [family.classes[c] for c in range(4) if labels[:, c].all() or not labels[:, c].any()]
    with pytest.raises(UserError, match="empty"):
        calibrate_thresholds(family, net, [])


def test_bad_images_are_refused() -> None:
    family, net = tiny_family()
    with pytest.raises(UserError, match=r"\(H, W, 3\) uint8"):
        segment_image(family, net, np.zeros((64, 64), np.uint8))
    with pytest.raises(UserError, match="resolution factor"):
        cut_tiles(np.zeros((64, 64, 3), np.uint8), 224, 0.0)


@pytest.mark.cuda
def test_gpu_maps_match_cpu() -> None:
    family, net = tiny_family()
    net.thresholds.zero_()
    image = generate_tissue_tile(5, (200, 240)).image
    cpu = segment_image(family, net, image)["tissue"]
    gpu = segment_image(family, net.cuda(), image, device="cuda")["tissue"]
    assert np.allclose(cpu.adjusted, gpu.adjusted, atol=1e-4)
    for stage in STAGES:
        assert (cpu.labels[stage] == gpu.labels[stage]).mean() >= 0.99
