"""Tests of the FullNet family: config profiles, targets through the Dataset, loss, predict, postprocess."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import config
from inference.predict import family_predictor
from misc.errors import UserError
from models.fullnet.family import FullNetFamily


def tiny_cfg(**infer) -> dict:
    cfg = config.load_config("fullnet", "demo", None, [])
    cfg["infer"].update(infer)
    return cfg


@pytest.fixture()
def family() -> FullNetFamily:
    return FullNetFamily(tiny_cfg())


def sample(seed: int = 0, size: int = 32) -> dict:
    rng = np.random.default_rng(seed)
    inst_map = np.zeros((size, size), np.int32)
    inst_map[4:12, 4:12] = 1
    inst_map[4:12, 12:20] = 2
    inst_map[20:28, 18:27] = 3
    return {"image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "inst_map": inst_map}


@pytest.mark.parametrize("profile", ["paper", "cpu", "demo", "glas"])
def test_profiles_resolve(profile: str) -> None:
    cfg = config.load_config("fullnet", profile, None, [])
    assert cfg["infer"]["input_size"] >= cfg["infer"]["output_size"]


def test_paper_profile_has_the_published_training_setup() -> None:
    cfg = config.load_config("fullnet", "paper", None, [])
    phase = cfg["train"]["phases"][0]
    assert phase["optimizer"] == {"name": "adam", "lr": 1.0e-3, "betas": [0.9, 0.99], "weight_decay": 1.0e-4}
    assert phase["batch_size"] == 8 and cfg["infer"]["tta"] is True
    assert (cfg["infer"]["input_size"], cfg["infer"]["keep_margin"]) == (208, 40)


def test_glas_profile_constants() -> None:
    cfg = config.load_config("fullnet", "glas", None, [])
    assert (cfg["targets"]["radius"], cfg["targets"]["sigma"]) == (2, 20.0)
    assert cfg["postproc"] == {"min_area": 100, "radius": 4}
    assert cfg["train"]["phases"][0]["optimizer"]["lr"] == 5.0e-4
    assert cfg["infer"]["resize_shorter"] == 208 and cfg["data"]["augment"] == "fullnet_glas"


def test_glas_inference_is_one_whole_image_pass_resized_back() -> None:
    from inference.predict import infer_image

    cfg = tiny_cfg(resize_shorter=24)
    family = FullNetFamily(cfg)
    net = family.build_network()
    calls = []
    predict = family.predict
    family.predict = lambda net, images: calls.append(tuple(images.shape)) or predict(net, images)
    maps = infer_image(family, net, sample(size=40)["image"][:, :30], "cpu")
    assert calls == [(1, 3, 32, 24)] and maps["prob"].shape == (40, 30, 3)
    np.testing.assert_allclose(maps["prob"].sum(-1), 1.0, atol=1e-5)


def test_batch_from_the_dataset_trains_one_step(family: FullNetFamily) -> None:
    from loader.datasets import SampleDataset

    dataset = SampleDataset([sample(0), sample(1)], target_builder=family.target_builder())
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    batch["image"] = batch["image"].permute(0, 3, 1, 2).float()
    net = family.build_network()
    family.norm_stats = family.fit_norm_stats([s["image"] for s in (sample(0), sample(1))])
    loss, terms = family.loss(family.forward(net, batch), batch, {"ce": 1.0, "var": 1.0})
    loss.backward()
    assert set(terms) == {"ce", "var"} and torch.isfinite(loss)
    assert net.conv2.weight.grad is not None


def test_alpha_zero_in_config_drops_the_variance_term() -> None:
    cfg = tiny_cfg()
    cfg["loss"]["alpha"] = 0.0
    family = FullNetFamily(cfg)
    targets = family.target_builder()(sample())
    batch = {k: torch.from_numpy(np.asarray(v))[None] for k, v in targets.items() if k != "image"}
    _, terms = family.loss(torch.zeros(1, 3, 32, 32), batch, {"ce": 1.0, "var": 1.0})
    assert set(terms) == {"ce"}


def test_norm_stats_are_per_channel_mean_and_std(family: FullNetFamily) -> None:
    images = [np.full((4, 4, 3), (10, 20, 30), np.uint8), np.full((4, 4, 3), (30, 20, 10), np.uint8)]
    stats = family.fit_norm_stats(images)
    np.testing.assert_allclose(stats["mean"], [20, 20, 20])
    np.testing.assert_allclose(stats["std"], [10, 1e-6, 10], atol=1e-5)


def test_predict_returns_probabilities_and_tta_is_equivariant() -> None:
    torch.manual_seed(0)
    family = FullNetFamily(tiny_cfg(tta=True))
    net = family.build_network().eval()
    predict = family_predictor(family, net, torch.device("cpu"))
    windows = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    prob = predict(windows)["prob"]
    assert prob.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(prob.sum(-1), np.ones((1, 16, 16)), atol=1e-5)
    flipped = predict(windows[:, :, ::-1])["prob"]
    np.testing.assert_allclose(flipped, prob[:, :, ::-1], atol=1e-5)


def test_postprocess_result_and_options(family: FullNetFamily) -> None:
    classes = np.zeros((20, 20), np.int64)
    classes[5:10, 5:10] = 1
    prob = np.eye(3, dtype=np.float32)[classes]
    result = family.postprocess({"prob": prob}, mag=40)
    assert result["inst_map"].max() == 1 and result["type_map"] is None
    assert set(result["inst_info"]) == {1}
    assert result["inside_prob"].shape == (20, 20)
    assert family.postprocess({"prob": prob}, min_area=26)["inst_map"].max() == 0
    with pytest.raises(UserError, match="unknown FullNet option"):
        family.postprocess({"prob": prob}, threshold=0.5)


def test_demo_profile_trains_through_the_engine(tmp_path, monkeypatch) -> None:
    import models
    from models.checkpoint import load_checkpoint
    from engine.run import RunRequest, run

    monkeypatch.setitem(models.FAMILIES, "fullnet", "models.fullnet.family:FullNetFamily")
    result = run(RunRequest(model="fullnet", profile="demo", out=str(tmp_path / "run"), quiet=True, device="cpu"))
    assert "pq" in result.last_scores
    family, _net = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt", "cpu")[:2]
    assert family.norm_stats is not None and len(family.norm_stats["mean"]) == 3


def test_checkpoint_carries_the_anchor_statistics(tmp_path, monkeypatch) -> None:
    import models
    from loader.colour import lab_statistics
    from models.checkpoint import load_checkpoint
    from engine.run import RunRequest, run
    from misc.io import write_image

    monkeypatch.setitem(models.FAMILIES, "fullnet", "models.fullnet.family:FullNetFamily")
    anchor = tmp_path / "anchor.png"
    write_image(anchor, sample(3)["image"])
    run(RunRequest(model="fullnet", profile="demo", out=str(tmp_path / "run"), quiet=True, device="cpu",
                   overrides=[f"model.reinhard_anchor={anchor}", "train.val_every=1000"]))
    expected = [float(v) for v in lab_statistics(sample(3)["image"])[0]]
    anchor.unlink()
    family = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt", "cpu")[0]
    np.testing.assert_allclose(family.norm_stats["reinhard"]["mean"], expected)
    image = sample(4)["image"]
    assert not np.array_equal(family.preprocess_image(image), image)
