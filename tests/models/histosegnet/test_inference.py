"""HistoSegNet inference through the shared tiler: dense per-window maps, padding of small images,
overlapping windows, the three stages of the output pass, CPU and GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import config
from inference.predict import infer_image, predict_image
from loader.synthetic_tissue import generate_tissue_tile
from models import get_family

STAGES = ("gradcam", "adjusted", "crf")


def tiny_family(profile: str = "demo", overrides: tuple[str, ...] = ()):
    cfg = config.load_config("histosegnet", profile, overrides=["model.width=0.0625", *overrides])
    family = get_family("histosegnet")(cfg)
    family.norm_stats = {"mean": [200.0], "std": [40.0]}
    family.extra_state = {"thresholds": [0.0] * len(family.classes)}  # every class passes
    torch.manual_seed(0)
    return family, family.build_network().eval()


def test_dense_maps_and_the_three_stages_of_an_image() -> None:
    family, net = tiny_family()
    tile = generate_tissue_tile(3, (160, 250))
    raw = infer_image(family, net, tile.image, "cpu")
    assert raw["gradcam"].shape == (160, 250, 4) and raw["class_prob"].shape == (1, 2, 4)  # 2 windows along the width
    assert np.array_equal(raw["rgb"], tile.image)
    strongest = int(raw["gradcam"].reshape(-1, 4).max(0).argmax())
    assert len(np.unique(raw["gradcam"][..., strongest])) > 100  # a map, not one value per window
    result = family.postprocess(raw)
    for stage in STAGES:
        labels = result["stages"][stage]
        assert labels.shape == (160, 250) and labels.min() >= 0 and labels.max() < 5
    assert (result["stages"]["gradcam"] != 0).all()  # background is not a Grad-CAM class


def test_overlapping_windows_are_stitched_with_their_geometry() -> None:
    family, net = tiny_family()
    image = generate_tissue_tile(4, (300, 420)).image
    sink = predict_image(family, net, image, "cpu")
    rows, cols = sink.maps["class_prob"].shape[:2]
    assert (rows, cols) == (2, 3) and sink.grids["class_prob"].step == 224 - 2 * 28  # 25 % overlap
    assert np.array_equal(sink.maps["rgb"], image)
    assert sink.maps["gradcam"].shape == (300, 420, 4)


def test_images_smaller_than_one_window_are_mirror_padded() -> None:
    family, net = tiny_family()
    image = generate_tissue_tile(5, (50, 70)).image
    raw = infer_image(family, net, image, "cpu")
    assert raw["gradcam"].shape == (50, 70, 4) and np.array_equal(raw["rgb"], image)
    assert family.postprocess(raw)["class_map"].shape == (50, 70)


def test_paper_mode_runs_morph_then_outputs_func() -> None:
    family, net = tiny_family("paper", ("infer.input_size=224", "infer.output_size=224", "infer.keep_margin=0"))
    family.norm_stats = {"mean": [193.09203], "std": [56.450138]}
    image = np.random.default_rng(0).integers(150, 255, (224, 224, 3), dtype=np.uint8)
    result = family.postprocess(infer_image(family, net, image, "cpu"))
    assert result["class_map"].shape == (224, 224) and result["class_map"].max() < 5
    assert [name for name, _ in family.class_info().values()] == ["Background", "Other", "G.O", "G.N", "T"]


@pytest.mark.cuda
def test_gpu_maps_match_cpu() -> None:
    family, net = tiny_family()
    image = generate_tissue_tile(5, (200, 240)).image
    cpu = infer_image(family, net, image, "cpu")
    gpu = infer_image(family, net.cuda(), image, "cuda")
    assert np.allclose(cpu["gradcam"], gpu["gradcam"], atol=1e-4)
    left, right = family.postprocess(cpu), family.postprocess(gpu)
    for stage in STAGES:
        assert (left["stages"][stage] == right["stages"][stage]).mean() >= 0.99
