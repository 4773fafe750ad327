"""The CHR-Net family object: profiles, groupings, windows, prediction, types, scores, freezing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from config import load_config
from misc.errors import UserError
from inference.predict import family_predictor, infer_image
from loader.synthetic import generate_tile
from inference.tiling import TileSpec
from models import get_family
from models.chrnet.family import CHRNetFamily
from models.chrnet.targets import marker_map


def family(*overrides: str, profile: str = "demo") -> CHRNetFamily:
    return CHRNetFamily(load_config("chrnet", profile, overrides=list(overrides)))


def test_registered_under_chrnet():
    assert get_family("chrnet") is CHRNetFamily


@pytest.mark.parametrize("profile, windows", [("paper", (262, 256)), ("cpu", (134, 128)), ("consep", (134, 128)),
                                              ("demo", (102, 96))])
def test_every_profile_has_matching_windows(profile, windows):
    builder = family(profile=profile).target_builder()
    assert (builder.input_size, builder.output_size) == windows


def test_paper_profile_is_the_published_schedule():
    cfg = load_config("chrnet", "paper")
    phases = cfg["train"]["phases"]
    summary = [(p["epochs"], p["batch_size"], p["freeze"], p["optimizer"]["name"], p["optimizer"]["lr"],
                p["schedule"]["step_size"], p["schedule"]["gamma"]) for p in phases]
    assert summary == [(50, 4, ["encoder"], "adam", 1.0e-4, 25, 0.1), (50, 3, [], "adam", 1.0e-4, 25, 0.1)]
    assert cfg["train"]["select_metric"] == "dice"
    weights = phases[0]["loss_weights"]
    assert {k: v for k, v in weights.items() if v} == dict.fromkeys(
        ("type_ce", "hrfe1_ce", "hrfe2_ce", "binary_ce", "marker_mae"), 1.0)


def test_paper_tiling_keeps_the_central_200_with_step_200_and_reflect_padding():
    spec = TileSpec.from_config(load_config("chrnet", "paper")["infer"])
    assert (spec.input_size, spec.output_size, spec.keep_margin, spec.stride, spec.pad_mode) == (262, 256, 28, 200,
                                                                                               "reflect")


@pytest.mark.parametrize("profile, first, second", [
    ("paper", [0, 1, 1, 2, 3], [0, 1, 2, 2, 3]),
    ("consep", [0, 1, 1, 2, 3], [0, 1, 2, 3, 1]),
    ("demo", [0, 1, 1, 2], [0, 1, 2, 2]),
])
def test_groupings_come_from_the_yaml(profile, first, second):
    assert [lut.tolist() for lut in family(profile=profile).lookups()] == [first, second]


def test_grouping_missing_a_class_is_refused_naming_it():
    with pytest.raises(UserError, match=r"model.groupings\[1\] misses class 3"):
        family("model.groupings=[[[1, 2], [3]], [[1], [2]]]").build_network()


def test_wrong_output_size_and_bad_window_are_user_errors():
    with pytest.raises(UserError, match="set infer.output_size: 96"):
        family("infer.output_size=100").target_builder()
    with pytest.raises(UserError, match=r"cannot take a 100 px window.*valid sizes are 6 \+ 8k"):
        family("infer.input_size=100", "infer.output_size=94").build_network()


def test_one_training_step_and_tiled_inference_on_a_synthetic_tile():
    fam = family()
    net = fam.build_network()
    image, inst_map, type_map = generate_tile(1, (110, 110))
    sample = {"image": image, "inst_map": inst_map, "type_map": type_map}
    targets = fam.target_builder()({**sample, **fam.target_builder().precompute(sample)})
    batch = {k: torch.as_tensor(v)[None] for k, v in targets.items()}
    weights = load_config("chrnet", "demo")["train"]["phases"][0]["loss_weights"]
    loss, terms = fam.loss(fam.forward(net, batch), batch, weights)
    loss.backward()
    assert set(terms) == {"type_ce", "hrfe1_ce", "hrfe2_ce", "binary_ce", "marker_mae"} and torch.isfinite(loss)
    raw = infer_image(fam, net, image[:100, :90], "cpu")
    assert {k: v.shape for k, v in raw.items()} == {"np_prob": (100, 90, 1), "marker": (100, 90, 1),
                                                    "tp_prob": (100, 90, 4)}
    result = fam.postprocess(raw)
    assert result["inst_map"].shape == result["type_map"].shape == (100, 90)


def _raw_maps() -> tuple[dict, np.ndarray]:
    inst = np.zeros((40, 40), np.int32)
    inst[5:15, 5:15] = 1
    inst[20:32, 20:32] = 2
    tp_prob = np.zeros((40, 40, 5), np.float32)
    tp_prob[..., 0] = 1.0
    tp_prob[inst == 1] = [0.6, 0.1, 0.3, 0.0, 0.0]  # background wins but is ignored: type 2
    tp_prob[inst == 2] = [0.1, 0.0, 0.0, 0.1, 0.8]
    tp_prob[25:32, 20:32] = [0.1, 0.0, 0.0, 0.8, 0.1]  # 7 of 12 rows say type 3: majority
    raw = {"np_prob": (inst > 0).astype(np.float32)[..., None] * 0.9, "marker": marker_map(inst)[..., None],
           "tp_prob": tp_prob}
    return raw, inst


def test_types_are_the_majority_of_the_foreground_arg_max():
    raw, inst = _raw_maps()
    result = family(profile="paper").postprocess(raw)
    types = {info["type"] for info in result["inst_info"].values()}
    assert result["inst_map"].max() == 2 and types == {2, 3}
    assert set(np.unique(result["type_map"][inst == 1])) <= {0, 2}


def test_evaluate_gives_dice_for_selection_and_per_class_pq():
    raw, inst = _raw_maps()
    fam = family(profile="paper")
    result = fam.postprocess(raw)
    truth = {"inst_map": inst, "type_map": np.select([inst == 1, inst == 2], [2, 3], 0)}
    scores = fam.evaluate(result, truth)
    assert scores["dice"] > 0.8
    assert {"pq_type1", "pq_type2", "pq_type3", "pq_type4", "mpq", "pq", "aji"} <= set(scores)
    assert np.isnan(scores["pq_type1"]) and scores["pq_type2"] > 0.5 and scores["pq_type3"] > 0.5
    assert scores["mpq"] == pytest.approx(np.nanmean([scores[f"pq_type{c}"] for c in range(1, 5)]))


def test_freeze_encoder_phase_trains_the_stem_and_everything_outside_the_encoder():
    fam = family()
    net = fam.build_network()
    params = {id(p) for group in fam.parameter_groups(net, {"freeze": ["encoder"]}) for p in group["params"]}
    names = {name for name, p in net.named_parameters() if id(p) in params}
    assert "encoder.resnet.conv1.weight" in names and "hrfe1.res11.block.conv1.weight" in names
    assert not any(n.startswith(("encoder.resnet.layer", "encoder.context")) for n in names)
    assert net.encoder.frozen
    fam.parameter_groups(net, {"freeze": []})
    assert not net.encoder.frozen and all(p.requires_grad for p in net.parameters())


def test_tta_averages_the_scalar_maps_over_the_dihedral_group():
    fam = family("infer.tta=true")
    net = fam.build_network().eval()
    window = (np.random.default_rng(0).random((1, 102, 102, 3)) * 255).astype(np.uint8)
    maps = family_predictor(fam, net, torch.device("cpu"))(window)
    images = torch.from_numpy(window).permute(0, 3, 1, 2).float()
    outputs = []
    for flip in (False, True):
        for turns in range(4):
            x = torch.rot90(images.flip(-1) if flip else images, turns, (2, 3))
            y = torch.rot90(fam.predict(net, x)["marker"], -turns, (2, 3))
            outputs.append(y.flip(-1) if flip else y)
    expected = torch.stack(outputs).mean(0)[:, 0].numpy()
    assert np.allclose(maps["marker"][..., 0], expected, atol=1e-5)
