"""Engine building blocks: schedules, tiling, splits, checkpoints, freezing, NaN stop, accumulation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from engine import checkpoint as ckpt
from engine import data, loop, optim, run
from misc.errors import UserError
from misc.precision import cpu_bf16_supported
from models import load_model, load_plugins, register_family
from models.checkpoint import load_checkpoint, read_checkpoint
from tests.engine.helpers import PLUGIN

load_plugins([PLUGIN])
from tests.engine.toy_families import PhasedFamily, PatchClassifierFamily  # noqa: E402


def _run(tmp_path, model: str, *overrides: str, name: str = "run") -> loop.TrainResult:
    """Train a toy family in this process on CPU."""
    request = run.RunRequest(
        model=model, data="synthetic", out=str(tmp_path / name), overrides=list(overrides), device="cpu", quiet=True,
    )
    return run.run(request)


@pytest.mark.parametrize(
    ("spec", "epoch", "expected"),
    [
        ({"name": "step", "step_size": 25, "gamma": 0.1}, 24, 1.0),
        ({"name": "step", "step_size": 25, "gamma": 0.1}, 25, 0.1),
        ({"name": "step", "step_size": 25, "gamma": 0.1}, 50, 0.01),
        ({"name": "multistep", "milestones": [30, 40], "gamma": 0.1}, 35, 0.1),
        ({"name": "multistep", "milestones": [30, 40], "gamma": 0.1}, 45, 0.01),
        ({"name": "cosine"}, 5, 0.5),
        ({"name": "poly", "power": 1.0}, 5, 0.5),
        ({"name": "constant"}, 7, 1.0),
    ],
)
def test_schedule_factor(spec, epoch, expected):
    assert optim.schedule_factor(spec, epoch, 10) == pytest.approx(expected)


def test_unknown_schedule_is_a_user_error():
    with pytest.raises(UserError, match="schedule.name 'linear'"):
        optim.schedule_factor({"name": "linear"}, 0, 10)


def test_warmup_then_step_schedule_per_optimizer_step():
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    phase = {"epochs": 4, "schedule": {"name": "step", "step_size": 1, "gamma": 0.5}}
    scheduler = optim.build_scheduler(optimizer, phase, steps_per_epoch=3, warmup_steps=2)
    lrs = []
    for _ in range(7):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25])


def test_unknown_optimizer_keyword_is_a_user_error():
    groups = [{"params": [nn.Parameter(torch.zeros(1))]}]
    with pytest.raises(UserError, match="phases 'all': optimizer adam.*'momentum'"):
        optim.build_optimizer(groups, {"name": "adam", "lr": 0.1, "momentum": 0.9}, "all")


def test_held_out_split_keeps_each_source_image_on_one_side():
    samples = [{"group": g, "name": f"{g}_{i}"} for g in "abcde" for i in range(3)]
    train_idx, val_idx = data.split_by_group(samples, 0.4, seed=0)
    val_groups = {samples[i]["group"] for i in val_idx}
    assert len(val_groups) == 2 and len(val_idx) == 6 and len(train_idx) == 9
    assert val_groups.isdisjoint(samples[i]["group"] for i in train_idx)


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ckpt.save_checkpoint(tmp_path / "rng.pt", {"rng": ckpt.rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_garbage_checkpoint_is_a_user_error(tmp_path):
    path = tmp_path / "latest.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        read_checkpoint(path)


def test_train_mode_puts_frozen_modules_in_eval():
    family = PhasedFamily({"model": {"width": 2, "factor": 2}})
    net = family.build_network()
    family.train_mode(net, {"freeze": ["refine"]})
    assert net.detect.training and not net.refine.training and not net.refine[2].training


def test_frozen_module_keeps_its_weights(tmp_path):
    phase = ("train.phases=[{name: only, epochs: 1, batch_size: 4, freeze: [refine],"
             " optimizer: {name: adam, lr: 0.01}, loss_weights: {coarse: 1.0, fine: 1.0}}]")
    run.seed_everything(5)
    initial = PhasedFamily({"model": {"width": 4, "factor": 4}}).build_network().state_dict()
    trained = _run(tmp_path, "toy_phases", phase).net.state_dict()
    assert all(torch.equal(trained[k], initial[k]) for k in initial if k.startswith("refine."))
    assert not torch.equal(trained["detect.0.weight"], initial["detect.0.weight"])


def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    phase = ("train.phases=[{name: all, epochs: 1, batch_size: %d, freeze: [], optimizer: {name: sgd, lr: 0.5},"
             " loss_weights: {bce: 1.0}}]")
    whole = _run(tmp_path, "toy_patchcls", phase % 4, name="whole").net.state_dict()
    accumulated = _run(tmp_path, "toy_patchcls", phase % 2, "train.accumulate=2", name="acc").net.state_dict()
    assert all(torch.allclose(whole[k], accumulated[k], rtol=0, atol=1e-6) for k in whole)


def test_gradient_clipping_bounds_each_update(tmp_path):
    phase = ("train.phases=[{name: all, epochs: 1, batch_size: 8, freeze: [], optimizer: {name: sgd, lr: 1.0},"
             " loss_weights: {bce: 1.0}}]")
    run.seed_everything(3)
    initial = PatchClassifierFamily({"model": {"classes": 3, "width": 8}}).build_network().state_dict()
    trained = _run(tmp_path, "toy_patchcls", phase, "train.clip_grad_norm=0.001").net.state_dict()
    change = torch.sqrt(sum(((trained[k] - initial[k]) ** 2).sum() for k in initial))
    assert 0 < change.item() <= 0.001 + 1e-7  # one step of SGD lr 1 on a gradient clipped to norm 0.001


class _NanFamily(PatchClassifierFamily):
    """toy_patchcls whose extra loss term turns NaN at the third step."""

    name = "toy_nan"
    calls = 0

    def loss(self, outputs, batch, weights):
        total, terms = super().loss(outputs, batch, weights)
        _NanFamily.calls += 1
        bad = torch.tensor(float("nan") if _NanFamily.calls == 3 else 0.0)
        return total + bad, {**terms, "bad_term": bad}


def test_non_finite_loss_stops_naming_step_and_term(tmp_path):
    register_family(_NanFamily.name, _NanFamily)
    _NanFamily.calls = 0
    with pytest.raises(loop.NonFiniteLoss, match=r"epoch 2, step 3 .*bad_term=nan"):
        _run(tmp_path, "toy_nan")


def test_load_checkpoint_restores_family_norm_stats_and_eval_network(tmp_path):
    result = _run(tmp_path, "toy_patchcls")
    family, net, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert isinstance(family, PatchClassifierFamily) and not net.training
    assert meta["family"] == "toy_patchcls" and meta["epoch"] == 2 and meta["step"] == 4
    train_images = data.ImageView(data.synthetic_dataset(8, 0, 32))
    assert family.norm_stats == family.fit_norm_stats(train_images)
    loaded = load_model(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert all(torch.equal(v, result.net.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_load_model_refuses_a_file_that_is_no_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="weights.pt"):
        load_model(path)


def test_cpu_autocast_is_bf16_only_with_amp_cpu() -> None:
    cpu = torch.device("cpu")
    assert loop.training_amp_dtype({"amp": True}, cpu) is None
    expected = torch.bfloat16 if cpu_bf16_supported() else None
    assert loop.training_amp_dtype({"amp": True, "amp_cpu": True}, cpu) == expected


@pytest.mark.skipif(not cpu_bf16_supported(), reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
def test_hovernet_trains_under_cpu_bf16_autocast(tmp_path) -> None:
    result = run.run(run.RunRequest(
        model="hovernet", profile="demo", out=str(tmp_path / "run"), device="cpu", quiet=True,
        overrides=["train.amp_cpu=true", "train.channels_last=true", "data.synthetic.n_train=4",
                   "data.synthetic.n_val=1", "train.phases.0.epochs=1"],
    ))
    assert np.isfinite(result.last_scores["pq"])


def test_channels_last_is_dropped_for_dilated_convolutions_under_cpu_bf16() -> None:
    cpu = torch.device("cpu")
    dilated = nn.Sequential(nn.Conv2d(3, 4, 3, padding=2, dilation=2))
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    cfg = {"channels_last": True}
    assert loop.training_channels_last(dilated, cfg, cpu, None) and loop.training_channels_last(plain, cfg, cpu, torch.bfloat16)
    assert not loop.training_channels_last(dilated, cfg, cpu, torch.bfloat16)
    assert not loop.training_channels_last(plain, {"channels_last": False}, cpu, None)
