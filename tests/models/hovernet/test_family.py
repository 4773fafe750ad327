"""The HoVer-Net family object: configuration, targets, prediction, post-processing, freezing."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from config import load_config
from misc.errors import UserError
from inference.predict import infer_image
from loader.synthetic import generate_tile
from models import get_family
from models.hovernet.family import HoVerNetFamily
from models.hovernet.targets import hv_map

SMALL = ["infer.input_size=120", "infer.output_size=28"]


def family(*overrides: str, profile: str = "demo") -> HoVerNetFamily:
    return HoVerNetFamily(load_config("hovernet", profile, overrides=[*SMALL, *overrides]))


def test_registered_under_hovernet():
    assert get_family("hovernet") is HoVerNetFamily


@pytest.mark.parametrize("profile, windows", [("paper", (270, 80)), ("cpu", (256, 256)), ("demo", (256, 164))])
def test_every_profile_has_matching_windows(profile, windows):
    builder = HoVerNetFamily(load_config("hovernet", profile)).target_builder()
    assert (builder.input_size, builder.output_size) == windows


def test_paper_profile_is_the_published_schedule():
    phases = load_config("hovernet", "paper")["train"]["phases"]
    summary = [(p["epochs"], p["batch_size"], p["freeze"], p["optimizer"]["lr"], p["schedule"]["step_size"]) for p in phases]
    assert summary == [(50, 8, ["encoder"], 1.0e-4, 25), (50, 4, [], 1.0e-4, 25)]


def test_paper_loss_weights_are_the_tf_values():
    weights = load_config("hovernet", "paper")["train"]["phases"][0]["loss_weights"]
    assert weights == {"np_bce": 1.0, "np_dice": 1.0, "hv_mse": 2.0, "hv_msge": 1.0, "tp_bce": 1.0, "tp_dice": 1.0}


def test_wrong_output_size_is_a_user_error():
    with pytest.raises(UserError, match="infer.output_size: 28"):
        family("infer.output_size=30").target_builder()


def test_target_builder_output_for_a_typed_model():
    image, inst_map, type_map = generate_tile(0, (130, 130))
    builder = pickle.loads(pickle.dumps(family("model.nr_types=4").target_builder()))
    targets = builder({"image": image, "inst_map": inst_map, "type_map": type_map})
    assert {k: v.shape for k, v in targets.items()} == {
        "image": (3, 120, 120), "np_map": (28, 28), "hv_map": (2, 28, 28), "tp_map": (28, 28)
    }


def test_same_mode_targets_cover_the_whole_input_window():
    image, inst_map, _ = generate_tile(0, (130, 130))
    builder = family("model.mode=same", "infer.output_size=120").target_builder()
    targets = builder({"image": image, "inst_map": inst_map})
    assert {k: v.shape for k, v in targets.items()} == {"image": (3, 120, 120), "np_map": (120, 120), "hv_map": (2, 120, 120)}


def test_same_mode_infers_a_whole_image_with_kept_margins():
    fam = family("model.mode=same", "infer.input_size=64", "infer.output_size=64", "infer.keep_margin=8")
    net = fam.build_network()
    maps = infer_image(fam, net, generate_tile(1, (150, 130))[0], "cpu")
    assert {k: v.shape for k, v in maps.items()} == {"np_prob": (150, 130, 1), "hv": (150, 130, 2)}


def test_network_magnification_resizes_the_image_and_maps_back():
    fam = family("model.mode=same", "infer.input_size=64", "infer.output_size=64", "infer.net_mag=20")
    net = fam.build_network()
    seen = []
    net.register_forward_pre_hook(lambda _module, args: seen.append(tuple(args[0].shape)))
    maps = infer_image(fam, net, generate_tile(1, (150, 130))[0], "cpu", batch_size=100)
    assert seen == [(4, 3, 64, 64)]  # the image at half size (75 x 65) takes 2 x 2 windows, not 3 x 3
    assert {k: v.shape for k, v in maps.items()} == {"np_prob": (150, 130, 1), "hv": (150, 130, 2)}


def test_predict_returns_probabilities_of_the_output_window():
    fam = family("model.nr_types=3")
    net = fam.build_network().eval()
    maps = fam.predict(net, torch.rand(2, 3, 120, 120) * 255)
    shapes = {k: tuple(v.shape) for k, v in maps.items()}
    assert shapes == {"np_prob": (2, 1, 28, 28), "hv": (2, 2, 28, 28), "tp_prob": (2, 3, 28, 28)}
    assert torch.allclose(maps["tp_prob"].sum(1), torch.ones(2, 28, 28))


def test_loss_uses_the_phase_weights():
    fam = family()
    net = fam.build_network()
    image, inst_map, _ = generate_tile(1, (120, 120))
    targets = fam.target_builder()({"image": image, "inst_map": inst_map})
    batch = {k: torch.from_numpy(v)[None] for k, v in targets.items()}
    weights = fam.cfg["train"]["phases"][0]["loss_weights"]
    total, terms = fam.loss(fam.forward(net, batch), batch, weights)
    assert total.item() == pytest.approx(sum(weights[k] * v.item() for k, v in terms.items()), rel=1e-5)


def test_postprocess_of_perfect_maps_recovers_the_instances():
    truth = np.zeros((48, 48), np.int32)
    rows, cols = np.indices(truth.shape)
    truth[(rows - 24) ** 2 + (cols - 14) ** 2 <= 81] = 1
    truth[(rows - 24) ** 2 + (cols - 33) ** 2 <= 81] = 2
    raw = {"np_prob": (truth > 0).astype(np.float32)[..., None], "hv": np.moveaxis(hv_map(truth), 0, -1)}
    result = family().postprocess(raw)
    assert result["inst_map"].max() == 2 and result["type_map"] is None and sorted(result["inst_info"]) == [1, 2]


def test_postprocess_types_each_instance():
    truth = np.zeros((32, 32), np.int32)
    truth[8:20, 8:20] = 1
    raw = {
        "np_prob": (truth > 0).astype(np.float32)[..., None],
        "hv": np.moveaxis(hv_map(truth), 0, -1),
        "tp_prob": np.stack([truth == 0, np.zeros_like(truth), truth > 0], -1).astype(np.float32),
    }
    result = family().postprocess(raw)
    assert result["inst_info"][1]["type"] == 2 and set(np.unique(result["type_map"])) == {0, 2}


def test_postprocess_without_hv_is_a_user_error():
    with pytest.raises(UserError, match="'hv'"):
        family().postprocess({"np_prob": np.zeros((8, 8, 1), np.float32)})


def test_frozen_encoder_phase_trains_the_stem_but_not_the_encoder_units():
    fam = family()
    net = fam.build_network()
    trainable = {id(p) for p in fam.parameter_groups(net, {"freeze": ["encoder"]})[0]["params"]}
    frozen = {id(p) for p in net.frozen_encoder_parameters()}
    stem = {id(p) for p in net.stem.parameters()}
    assert not trainable & frozen and stem <= trainable


def test_unfrozen_phase_trains_everything():
    fam = family()
    net = fam.build_network()
    fam.parameter_groups(net, {"freeze": ["encoder"]})
    trainable = fam.parameter_groups(net, {"freeze": []})[0]["params"]
    assert len(trainable) == len(list(net.parameters()))


def test_zero_initialised_hv_head_starts_at_zero_offsets():
    fam = family("model.zero_init_hv=true")
    maps = fam.predict(fam.build_network().eval(), torch.rand(1, 3, 120, 120) * 255)
    assert not maps["hv"].any()


def test_zero_initialised_shared_head_zeroes_only_the_hv_rows():
    fam = family("model.zero_init_hv=true", "model.decoder.shared=true")
    net = fam.build_network().eval()
    maps = fam.predict(net, torch.rand(1, 3, 120, 120) * 255)
    assert not maps["hv"].any()
    with torch.no_grad():  # the NP logits, not the probabilities: a random network's may saturate at 1
        assert net(torch.rand(1, 3, 120, 120))["np"].std() > 0


def test_decoder_shared_option_builds_one_decoder():
    assert list(family("model.decoder.shared=true").build_network().decoders) == ["shared"]
    assert list(family().build_network().decoders) == ["np", "hv"]


def test_config_without_the_shared_key_builds_separate_decoders():
    cfg = load_config("hovernet", "demo", overrides=SMALL)
    del cfg["model"]["decoder"]["shared"]
    assert list(HoVerNetFamily(cfg).build_network().decoders) == ["np", "hv"]


def test_fitted_reinhard_target_travels_in_the_checkpoint(tmp_path):
    from models.checkpoint import load_checkpoint
    from engine.run import RunRequest, run

    run(RunRequest(model="hovernet", profile="demo", out=str(tmp_path / "run"), quiet=True, device="cpu",
                   overrides=["model.reinhard=fit", "data.synthetic.n_train=2", "data.synthetic.n_val=1",
                              "train.phases.0.epochs=1"]))
    restored = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt", "cpu")[0]
    target = restored.norm_stats["reinhard"]
    assert sorted(target) == ["mean", "std"] and all(len(target[key]) == 3 for key in target)
    image = generate_tile(5, (64, 64))[0]
    assert not np.array_equal(restored.preprocess_image(image), image)


def test_target_builder_carries_the_family_reinhard_target():
    cfg = load_config("hovernet", "demo", overrides=[*SMALL, "model.reinhard={mean: [60, 10, -5], std: [10, 5, 5]}"])
    builder = HoVerNetFamily(cfg).target_builder()
    assert builder.reinhard == {"mean": [60.0, 10.0, -5.0], "std": [10.0, 5.0, 5.0]}
    assert pickle.loads(pickle.dumps(builder)) == builder
