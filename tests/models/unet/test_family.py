"""The ``unet`` family: profiles, prediction with flip TTA, post-processing at 20x and 40x."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models.unet.postproc as unet_postproc
from config import load_config
from metrics import instance_stats
from misc.errors import UserError
from inference.predict import infer_image
from loader.synthetic import generate_tile
from models import get_family
from models.hovernet.targets import hv_map
from inference.predict import family_predictor
from models.unet.family import UNetFamily

SMALL = ["infer.input_size=64", "infer.output_size=64", "infer.keep_margin=8"]


def family(*overrides: str, profile: str = "demo") -> UNetFamily:
    return UNetFamily(load_config("unet", profile, overrides=[*SMALL, *overrides]))


def test_registered_under_unet():
    assert get_family("unet") is UNetFamily


def test_paper_profile_is_the_published_recipe():
    cfg = load_config("unet", "paper")
    (phase,) = cfg["train"]["phases"]
    assert (phase["epochs"], phase["batch_size"], phase["optimizer"]["name"], phase["optimizer"]["lr"]) == (50, 4, "adam", 3.0e-3)
    assert phase["schedule"] == {"name": "multistep", "milestones": [30, 40], "gamma": 0.1}
    assert phase["loss_weights"] == {"np_bce": 2.0, "np_dice": 2.0, "hv_mse": 2.0, "hv_msge": 2.0, "tp_focal": 2.0,
                                     "tp_bce": 0.0, "tp_dice": 0.0, "tp_wce": 0.0}
    assert cfg["model"]["encoder"]["units"] == [3, 4, 6, 3] and cfg["model"]["decoder"]["dropout"] == 0.5
    assert cfg["data"]["augment"] == "unet" and cfg["infer"]["tta"] == ["identity", "hflip", "vflip"] and cfg["infer"]["mag"] == 20


@pytest.mark.parametrize("profile, most", [("cpu", 1_000_000), ("demo", 1_000_000)])
def test_cpu_and_demo_profiles_are_small(profile, most):
    net = UNetFamily(load_config("unet", profile)).build_network()
    assert sum(p.numel() for p in net.parameters()) < most


def test_output_window_must_equal_the_input():
    with pytest.raises(UserError, match="set it to 64"):
        family("infer.output_size=48").build_network()


def test_published_tta_averages_the_flips_with_hv_signs_undone():
    fam = family("infer.tta=[identity, hflip, vflip]")
    torch.manual_seed(0)
    net = fam.build_network().eval()
    windows = (np.random.default_rng(0).random((1, 64, 64, 3)) * 255).astype(np.uint8)
    averaged = family_predictor(fam, net, torch.device("cpu"))(windows)
    plain = family_predictor(family("infer.tta=false"), net, torch.device("cpu"))
    flipped = [plain(windows), plain(windows[:, :, ::-1]), plain(windows[:, ::-1])]
    hv = (flipped[0]["hv"] + flipped[1]["hv"][:, :, ::-1] * [-1, 1] + flipped[2]["hv"][:, ::-1] * [1, -1]) / 3
    np.testing.assert_allclose(averaged["hv"], hv, atol=1e-5)
    np_prob = (flipped[0]["np_prob"] + flipped[1]["np_prob"][:, :, ::-1] + flipped[2]["np_prob"][:, ::-1]) / 3
    np.testing.assert_allclose(averaged["np_prob"], np_prob, atol=1e-5)


def test_predict_gives_probabilities_and_tanh_hv():
    fam = family()
    torch.manual_seed(0)
    net = fam.build_network().eval()
    out = fam.predict(net, torch.rand(1, 3, 64, 64) * 255)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"np_prob": (1, 1, 64, 64), "hv": (1, 2, 64, 64), "tp_prob": (1, 4, 64, 64)}
    assert out["hv"].abs().max() <= 1.0 and torch.allclose(out["tp_prob"].sum(1), torch.ones(1, 64, 64))


def test_tiled_inference_on_a_larger_image():
    fam = family()
    net = fam.build_network()
    raw = infer_image(fam, net, generate_tile(0, (100, 90))[0], "cpu")
    assert {k: v.shape for k, v in raw.items()} == {"np_prob": (100, 90, 1), "hv": (100, 90, 2), "tp_prob": (100, 90, 4)}


def disks(radius: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Two touching disks (ids 1, 2; types 3, 1) in a size x size map."""
    rows, cols = np.mgrid[:size, :size]
    inst = np.zeros((size, size), np.int32)
    centre = size // 2
    inst[(rows - centre) ** 2 + (cols - centre + radius) ** 2 <= radius**2] = 1
    inst[(rows - centre) ** 2 + (cols - centre - radius) ** 2 <= radius**2] = 2
    return inst, np.array([0, 3, 1], np.int32)[inst]


def perfect_raw(inst: np.ndarray, types: np.ndarray, nr_types: int = 4) -> dict[str, np.ndarray]:
    return {"np_prob": (inst > 0).astype(np.float32)[..., None], "hv": np.moveaxis(hv_map(inst), 0, -1),
            "tp_prob": np.eye(nr_types, dtype=np.float32)[types]}


@pytest.mark.parametrize("mag, radius", [(40, 14), (20, 7)])
def test_perfect_maps_give_the_nuclei_and_their_types(mag, radius):
    inst, types = disks(radius, 8 * radius)
    result = family().postprocess(perfect_raw(inst, types), mag=mag)
    assert result["inst_map"].shape == inst.shape and result["inst_map"].max() == 2
    assert instance_stats(inst, result["inst_map"])["pq"] > 0.85
    assert sorted(entry["type"] for entry in result["inst_info"].values()) == [1, 3]
    assert (result["type_map"][inst == 1] == 3).mean() > 0.9 and (result["type_map"][inst == 2] == 1).mean() > 0.9


def test_20x_maps_are_post_processed_at_40x(monkeypatch):
    seen = []
    original = unet_postproc.instances_from_np_hv
    monkeypatch.setattr(unet_postproc, "instances_from_np_hv", lambda np_prob, hv, params: seen.append((np_prob.shape, params.sobel_ksize)) or original(np_prob, hv, params))
    inst, types = disks(7, 56)
    family().postprocess(perfect_raw(inst, types), mag=20)
    family().postprocess(perfect_raw(inst, types), mag=20, resample_to_base=False)
    assert seen == [((112, 112), 21), ((56, 56), 11)]  # resampled with 40x constants; or scaled constants


def test_majority_vote_types_each_nucleus():
    inst, _ = disks(14, 112)
    types = np.where(inst > 0, 2, 0)
    types[(inst == 1) & (np.arange(112)[None, :] < 40)] = 1  # a minority of nucleus 1's pixels
    result = family().postprocess(perfect_raw(inst, types), mag=40)
    assert sorted(entry["type"] for entry in result["inst_info"].values()) == [2, 2]
    assert np.unique(result["type_map"][result["inst_map"] > 0]).tolist() == [2]


def test_missing_map_is_a_user_error():
    inst, types = disks(7, 56)
    raw = perfect_raw(inst, types)
    del raw["tp_prob"]
    with pytest.raises(UserError, match="needs the raw map 'tp_prob'"):
        family().postprocess(raw)


def test_sample_weights_follow_data_resample():
    inst, types = disks(7, 56)
    samples = [{"inst_map": inst, "type_map": types}, {"inst_map": np.zeros_like(inst), "type_map": np.zeros_like(types)}]
    assert family().sample_weights(samples) is None
    # types 1 and 3 each in 1 of 2 patches: r = sqrt(1 / 0.5) for the first patch, 1 for the empty one
    assert family("data.resample=1.0").sample_weights(samples).tolist() == pytest.approx([2**0.5, 1.0])


def test_resampling_trains_through_the_engine(tmp_path):
    from engine.data import WeightedShardSampler, build_splits

    cfg = load_config("unet", "demo", overrides=[*SMALL, "data.resample=0.9", "data.synthetic.size=64"])
    samples, _ = build_splits(cfg["data"], 0)
    weights = UNetFamily(cfg).sample_weights(samples)
    assert weights.shape == (len(samples),) and (weights >= 1.0).all() and weights.max() > 1.0
    sampler = WeightedShardSampler(weights, num_replicas=2, rank=1, seed=0)
    sampler.set_epoch(3)
    assert len(list(sampler)) == len(sampler) == len(samples) // 2 and list(sampler) == list(sampler)


def test_documented_weighted_ce_variant_replaces_the_focal_term():
    """The --set options of docs/families/unet.md's overwritten variant."""
    cfg = load_config("unet", "paper", overrides=[
        "train.phases.0.loss_weights={tp_focal: 0, tp_bce: 1, tp_dice: 1, tp_wce: 2}",
        "loss.class_weights=[0.1, 0.8, 0.2, 0.2, 0.2, 0.4, 0.2]"])
    weights = {name: w for name, w in cfg["train"]["phases"][0]["loss_weights"].items() if w}
    assert weights == {"np_bce": 2.0, "np_dice": 2.0, "hv_mse": 2.0, "hv_msge": 2.0, "tp_bce": 1, "tp_dice": 1, "tp_wce": 2}
