"""Tests of published-checkpoint handling: name mapping, structure proof, official files, ImageNet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from misc.errors import UserError
from models.hovernet.checkpoint import (
    NAME_RULES,
    bundled_type_info,
    detect_config,
    from_published_state,
    load_encoder_weights,
    load_official_checkpoint,
    ours_to_published,
    published_to_ours,
    read_type_info,
    to_published_state,
)
from models.hovernet.net import HoVerNet

FIXTURE = Path(__file__).resolve().parents[3].parent / "shared" / "fixtures" / "hovernet_state_keys.json"
CONFIGS = ["original_types0", "original_types5", "fast_types0", "fast_types6"]


@pytest.fixture(scope="module")
def published_keys() -> dict:
    """Names, shapes and parameter counts of the published network (shared fixture)."""
    if not FIXTURE.is_file():
        pytest.skip(f"published state-dict fixture not found at {FIXTURE}")
    return json.loads(FIXTURE.read_text())


def random_state(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the given names and shapes (long zeros for BN batch counters)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        name: torch.zeros((), dtype=torch.long)
        if name.endswith("num_batches_tracked")
        else torch.randn(shape, generator=gen)
        for name, shape in shapes.items()
    }


def config_of(name: str) -> tuple[str, int]:
    """('original', 5) for 'original_types5'."""
    mode, nr_types = name.split("_types")
    return mode, int(nr_types)


# ---- name mapping ----


@pytest.mark.parametrize(
    "published,ours",
    [
        ("conv0./.weight", "stem.conv.weight"),
        ("d1.units.2.preact/bn.running_var", "encoder.1.units.2.preact_bn.running_var"),
        ("d0.units.0.conv2/bn.weight", "encoder.0.units.0.bn2.weight"),
        ("d3.blk_bna.bn.bias", "encoder.3.out_bn.bias"),
        ("conv_bot.weight", "bottleneck.weight"),
        ("decoder.tp.u3.dense.units.7.preact_bna/bn.weight", "decoders.tp.up3.dense.units.7.preact_bn.weight"),
        ("decoder.np.u2.convf.weight", "decoders.np.up2.conv_out.weight"),
        ("decoder.hv.u1.conva.weight", "decoders.hv.up1.conv_in.weight"),
        ("decoder.hv.u0.conv.bias", "decoders.hv.head.conv.bias"),
    ],
)
def test_name_mapping_examples(published, ours):
    assert published_to_ours(published) == ours
    assert ours_to_published(ours) == published


def test_unpool_constant_maps_to_nothing():
    assert published_to_ours("upsample2x.unpool_mat") is None


def test_every_published_name_maps_to_a_distinct_name_and_back(published_keys):
    names = {name for config in published_keys.values() for name in config["state"]} - {"upsample2x.unpool_mat"}
    for name in names:
        ours = published_to_ours(name)
        assert ours_to_published(ours) == name
    assert len({published_to_ours(name) for name in names}) == len(names)
    assert len(NAME_RULES) == 16


def test_unknown_published_name_is_a_user_error():
    with pytest.raises(UserError, match="'decoder.np.u4.conva.weight' is not a state-dict name"):
        published_to_ours("decoder.np.u4.conva.weight")


# ---- structure proven by weights ----


@pytest.mark.parametrize("config", CONFIGS)
def test_published_state_loads_strictly_with_same_parameter_count(published_keys, config):
    mode, nr_types = config_of(config)
    net = HoVerNet(nr_types=nr_types, mode=mode)
    state = random_state(published_keys[config]["state"])
    net.load_state_dict(from_published_state(state), strict=True)
    assert sum(p.numel() for p in net.parameters()) == published_keys[config]["params"]
    assert torch.equal(net.decoders["np"].head.conv.bias, state["decoder.np.u0.conv.bias"])
    back = to_published_state(net.state_dict())
    assert {name: list(t.shape) for name, t in back.items()} == published_keys[config]["state"]


@pytest.mark.parametrize("config", CONFIGS)
def test_mode_and_types_detected_from_shapes(published_keys, config):
    shapes = published_keys[config]["state"]
    state = {name: torch.empty(shape) for name, shape in shapes.items()}
    assert detect_config(state) == config_of(config)


# ---- official checkpoint files ----


def test_official_file_with_module_prefix_loads_as_pannuke(published_keys, tmp_path):
    state = random_state(published_keys["fast_types6"]["state"], seed=1)
    path = tmp_path / "hovernet_fast_pannuke_type_tf2pytorch.tar"
    torch.save({"desc": {f"module.{name}": t for name, t in state.items()}}, path)
    net, info = load_official_checkpoint(path)
    assert (info["mode"], info["nr_types"], info["dataset"]) == ("fast", 6, "pannuke")
    assert info["type_info"][1] == ("neopla", (255, 0, 0))
    assert not net.training
    assert torch.equal(net.encoder[2].units[5].conv2.weight, state["d2.units.5.conv2.weight"])


def test_converted_checkpoint_without_batch_counters_loads(published_keys):
    state = random_state(published_keys["original_types5"]["state"], seed=2)
    state = {name: t for name, t in state.items() if not name.endswith("num_batches_tracked")}
    net, info = load_official_checkpoint({"desc": state})
    assert (info["mode"], info["nr_types"], info["dataset"]) == ("original", 5, "consep")
    assert int(net.stem.bn.num_batches_tracked) == 0
    assert torch.equal(net.decoders["tp"].up3.conv_in.weight, state["decoder.tp.u3.conva.weight"])


def test_instance_only_checkpoint_has_no_type_info(published_keys):
    _, info = load_official_checkpoint(random_state(published_keys["fast_types0"]["state"]))
    assert (info["mode"], info["nr_types"], info["dataset"], info["type_info"]) == ("fast", 0, None, None)


def test_type_info_file_overrides_bundled(published_keys, tmp_path):
    path = tmp_path / "type_info.json"
    path.write_text(json.dumps({str(i): [f"t{i}", [i, i, i]] for i in range(5)}))
    _, info = load_official_checkpoint(random_state(published_keys["fast_types0"]["state"]), type_info=path)
    assert info["type_info"][4] == ("t4", (4, 4, 4))


def test_mis_shaped_checkpoint_names_the_entry(published_keys):
    state = random_state(published_keys["fast_types0"]["state"])
    state["d1.units.0.conv1.weight"] = torch.zeros(128, 255, 1, 1)
    with pytest.raises(UserError, match=r"encoder\.1\.units\.0\.conv1\.weight \(128, 255, 1, 1\)"):
        load_official_checkpoint(state)


def test_state_dict_of_another_network_is_a_user_error(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"desc": {"fc.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(UserError, match=r"resnet\.pth' is not a HoVer-Net state dict: expected .*conv0\./\.weight"):
        load_official_checkpoint(path)


def test_non_checkpoint_file_is_a_user_error(tmp_path):
    path = tmp_path / "notes.tar"
    path.write_text("not a checkpoint")
    with pytest.raises(UserError, match=r"notes\.tar' is not a readable PyTorch checkpoint"):
        load_official_checkpoint(path)


def test_checkpoint_without_state_dict_is_a_user_error(tmp_path):
    path = tmp_path / "epoch.tar"
    torch.save({"desc": 3}, path)
    with pytest.raises(UserError, match=r"epoch\.tar' holds no state dict"):
        load_official_checkpoint(path)


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_official_checkpoint(tmp_path / "absent.tar")


# ---- type info ----


def test_bundled_type_info_names_and_colours():
    assert bundled_type_info("pannuke") == {
        0: ("nolabe", (0, 0, 0)), 1: ("neopla", (255, 0, 0)), 2: ("inflam", (0, 255, 0)),
        3: ("connec", (0, 0, 255)), 4: ("necros", (255, 255, 0)), 5: ("no-neo", (255, 165, 0)),
    }
    assert len(bundled_type_info("consep")) == 5
    assert len(bundled_type_info("monusac")) == 5


def test_malformed_type_info_is_a_user_error(tmp_path):
    path = tmp_path / "type_info.json"
    path.write_text(json.dumps({"0": "background"}))
    with pytest.raises(UserError, match="type_info.json' must map type ids"):
        read_type_info(path)


# ---- ImageNet encoder weights ----


def test_pretrained_encoder_file_loads_encoder_only(published_keys, tmp_path):
    shapes = published_keys["original_types0"]["state"]
    encoder_shapes = {n: s for n, s in shapes.items() if n.startswith(("conv0.", "d0.", "d1.", "d2.", "d3."))}
    encoder = random_state(encoder_shapes, seed=4)
    path = tmp_path / "ImageNet-ResNet50-Preact_pytorch.tar"
    torch.save({"desc": encoder}, path)
    net = HoVerNet(mode="original")
    load_encoder_weights(net, str(path))
    assert torch.equal(net.stem.conv.weight, encoder["conv0./.weight"])
    assert torch.equal(net.encoder[3].out_bn.running_var, encoder["d3.blk_bna.bn.running_var"])


def test_pretrained_encoder_with_other_width_is_a_user_error(published_keys, tmp_path):
    shapes = published_keys["fast_types0"]["state"]
    path = tmp_path / "imagenet.tar"
    torch.save({"desc": {"conv0./.weight": torch.zeros(shapes["conv0./.weight"])}}, path)
    with pytest.raises(UserError, match=r"imagenet\.tar' does not fit the encoder.*stem\.conv\.weight"):
        load_encoder_weights(HoVerNet(mode="fast", units=(1, 1, 1, 1), width=0.25), path)


def test_official_file_loads_through_the_shared_checkpoint_loader(published_keys, tmp_path):
    from models.checkpoint import load_checkpoint

    state = random_state(published_keys["fast_types6"]["state"], seed=2)
    path = tmp_path / "hovernet_fast_pannuke_type_tf2pytorch.tar"
    torch.save({"desc": {f"module.{name}": t for name, t in state.items() if "num_batches" not in name}}, path)
    family, net, meta = load_checkpoint(path)
    assert meta["family"] == "hovernet" and family.name == "hovernet"
    assert (meta["config"]["model"]["mode"], meta["config"]["model"]["nr_types"]) == ("fast", 6)
    assert (meta["config"]["infer"]["input_size"], meta["config"]["infer"]["output_size"]) == (256, 164)
    assert torch.equal(net.decoders["tp"].head.conv.weight, state["decoder.tp.u0.conv.weight"])
