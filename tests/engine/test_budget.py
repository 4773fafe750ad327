"""Epoch planning within a wall-clock budget (engine.budget)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from config import load_config
from loader.extract import ExtractOptions, extract_samples
from engine import budget
from engine.budget import HostTimes, plan_epochs, score_windows
from misc.errors import UserError
from misc.io import write_image
from loader.synthetic import generate_tile
from inference.tiling import ArraySink, TileSpec, predict_tiled
from models import get_family

TIMES = HostTimes(step_s=0.5, sample_s=0.1, window_s=2.0)  # an epoch of 10 samples in 5 batches of 2: 5 x 0.7 = 3.5 s


def test_epoch_seconds_counts_the_last_partial_batch() -> None:
    assert TIMES.epoch_seconds(samples=9, batch_size=2) == pytest.approx(5 * (0.5 + 2 * 0.1))


def test_plan_keeps_the_profile_epochs_when_they_fit() -> None:
    assert plan_epochs(TIMES, samples=10, batch_size=2, max_epochs=20, budget_s=1000.0) == 20


def test_plan_takes_the_epochs_that_fit_after_scoring() -> None:
    # 100 s - 10 windows x 2 s = 80 s of training; 80 / 3.5 = 22.9 -> 22 of at most 30
    assert plan_epochs(TIMES, samples=10, batch_size=2, max_epochs=30, budget_s=100.0, windows=10, margin=1.0) == 22


def test_plan_stretches_the_measured_times_by_the_margin() -> None:
    # every time x 2: 100 / 2 - 20 = 30 s of training at 3.5 s per epoch -> 8
    assert plan_epochs(TIMES, samples=10, batch_size=2, max_epochs=30, budget_s=100.0, windows=10, margin=2.0) == 8


def test_plan_trains_one_epoch_when_nothing_fits() -> None:
    assert plan_epochs(TIMES, samples=10, batch_size=2, max_epochs=20, budget_s=5.0, windows=10) == 1


def test_plan_refuses_an_empty_training_set() -> None:
    with pytest.raises(UserError, match="samples"):
        plan_epochs(TIMES, samples=0, batch_size=2, max_epochs=20, budget_s=100.0)


def demo_family(**infer: object) -> object:
    overrides = [f"infer.{key}={value}" for key, value in infer.items()]
    return get_family("hovernet")(load_config("hovernet", "demo", overrides=overrides))


def test_score_windows_counts_the_windows_inference_runs() -> None:
    family = demo_family()
    spec = TileSpec.from_config(family.cfg["infer"])
    calls = []

    def predict(windows: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(len(windows))
        size = spec.output_size
        return {"np_prob": np.zeros((len(windows), size, size, 1), np.float32)}

    image = np.zeros((500, 700, 3), np.uint8)
    predict_tiled(image, predict, spec, ArraySink(500), batch_size=3)
    assert score_windows(family, [(500, 700)]) == sum(calls)


def test_inference_timing_adds_the_batchnorm_adaptation_pass(monkeypatch) -> None:
    passes = []

    def counting_predictor(family, net, device, amp_dtype=None):
        tta = bool(family.cfg["infer"].get("tta"))
        return lambda windows: passes.append(tta)

    monkeypatch.setattr(budget, "family_predictor", counting_predictor)
    budget.time_inference(demo_family(tta="true", bn_adapt=0.5), torch.device("cpu"), repeats=1)
    assert passes == [True, False, True, False]  # warm-up and timed run: the TTA pass, then the plain one


def test_training_timing_refuses_less_than_one_batch() -> None:
    family = demo_family()
    with pytest.raises(UserError, match="fewer than one batch"):
        budget.time_training(family, [object()], torch.device("cpu"))


@pytest.fixture(scope="module")
def demo_patches(tmp_path_factory) -> Path:
    """Three 256x256 synthetic patches (the demo profile's input) in an .h5 patch file."""
    out = tmp_path_factory.mktemp("patches")
    tiles = []
    for index in range(3):
        image, inst_map, type_map = generate_tile(index, (256, 256))
        tiles.append(SimpleNamespace(name=f"t{index}", image=image, inst_map=inst_map, type_map=type_map, source=f"mem/{index}"))
    extract_samples(tiles, out, ExtractOptions(win=(256, 256), step=(256, 256), mode="valid", fmt="h5"), progress=False)
    return out / "all.h5"


def planned(capsys, demo_patches: Path, budget_s: float) -> int:
    budget.main(["--model", "hovernet", "--profile", "demo", "--data", str(demo_patches), "--budget-s", str(budget_s),
                 "--device", "cpu", "--set", "infer.tta=false"])  # no 8-fold TTA: a tenth of the inference timing
    return int(capsys.readouterr().out.strip())


def test_cli_plans_the_profile_epochs_for_a_generous_budget(capsys, demo_patches: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "measure", lambda *args: TIMES)  # the timing itself runs in the test below
    assert planned(capsys, demo_patches, 1.0e6) == load_config("hovernet", "demo")["train"]["phases"][0]["epochs"]


def test_cli_times_this_host_and_plans_one_epoch_for_a_budget_too_small(capsys, demo_patches: Path) -> None:
    assert planned(capsys, demo_patches, 0.001) == 1


def test_cli_names_a_missing_training_source(capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        budget.main(["--model", "hovernet", "--profile", "demo", "--data", str(tmp_path / "nosuch.h5"), "--budget-s", "60"])
    assert exit_info.value.code == 2 and "nosuch.h5" in capsys.readouterr().err


def test_cli_refuses_a_profile_of_several_phases(capsys, demo_patches: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        budget.main(["--model", "hovernet", "--profile", "paper", "--data", str(demo_patches), "--budget-s", "60"])
    assert exit_info.value.code == 2 and "2 phases" in capsys.readouterr().err


def test_cli_refuses_a_staged_family_in_one_line(capsys, demo_patches: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        budget.main(["--model", "h2gnet", "--profile", "cpu", "--data", str(demo_patches), "--budget-s", "60"])
    assert exit_info.value.code == 2 and "single-stage families; 'h2gnet' trains the stages" in capsys.readouterr().err


def test_training_seconds_set_the_scoring_aside_with_the_margin() -> None:
    assert budget.training_seconds(1000.0, windows=10, window_s=2.0, margin=1.25) == pytest.approx(975.0)


def test_training_seconds_are_at_least_one() -> None:
    assert budget.training_seconds(10.0, windows=10, window_s=2.0) == 1.0


def test_cli_seconds_time_only_the_inference(capsys, demo_patches: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    write_image(tmp_path / "images" / "tile.png", generate_tile(9, (300, 400))[0])
    monkeypatch.setattr(budget, "time_inference", lambda family, device: 2.0)
    monkeypatch.setattr(budget, "time_training", lambda *args: pytest.fail("the training step was timed"))
    budget.main(["--model", "hovernet", "--profile", "demo", "--data", str(demo_patches), "--budget-s", "10000",
                 "--score-images", str(tmp_path / "images"), "--device", "cpu", "--seconds"])
    windows = score_windows(get_family("hovernet")(load_config("hovernet", "demo")), [(300, 400)])
    expected = 10_000 - budget.SAFETY_MARGIN * windows * 2.0
    assert expected - 30 <= int(capsys.readouterr().out.strip()) <= expected
