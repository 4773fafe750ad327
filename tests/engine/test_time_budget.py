"""train.time_budget_s: epochs planned from measured epoch times, on a fake clock."""

from __future__ import annotations

import csv
import math

import pytest

from engine import loop, run
from misc.errors import UserError
from models import load_plugins
from models.checkpoint import read_checkpoint
from tests.engine.helpers import PLUGIN

load_plugins([PLUGIN])

EPOCH_S = 100.0
PHASES = ('train.phases=[{"name": "all", "epochs": 20, "batch_size": 4, "optimizer": {"name": "adam", "lr": 0.01}, '
          '"schedule": {"name": "cosine", "min_factor": 0.0}, "loss_weights": {"bce": 1.0}}]')


class FakeClock:
    """``time.time`` for the engine: it moves only when an epoch trains (``EPOCH_S`` each)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    real_epoch = loop._train_epoch

    def timed_epoch(*args, **kwargs):
        fake.now += EPOCH_S
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(loop.time, "time", fake.time)
    monkeypatch.setattr(loop, "_train_epoch", timed_epoch)
    return fake


def _run(tmp_path, *overrides: str, resume: bool = False) -> loop.TrainResult:
    request = run.RunRequest(model="toy_patchcls", data="synthetic", out=str(tmp_path / "run"), device="cpu",
                                quiet=True, resume=resume, overrides=[PHASES, *overrides])
    return run.run(request)


def test_planned_epochs_fill_the_time_left() -> None:
    assert loop.budgeted_epochs(budget_s=1000, spent_s=300, epoch_s=100, done=3, most=20) == 10


def test_planned_epochs_never_exceed_the_configured_ones() -> None:
    assert loop.budgeted_epochs(budget_s=10_000, spent_s=100, epoch_s=100, done=1, most=20) == 20


def test_planned_epochs_stop_when_no_epoch_fits() -> None:
    assert loop.budgeted_epochs(budget_s=1000, spent_s=950, epoch_s=100, done=5, most=20) == 5


@pytest.mark.parametrize("budget", ["0", "-5", "true", "soon"])
def test_budget_must_be_positive_seconds(budget: str) -> None:
    with pytest.raises(UserError, match="time_budget_s"):
        loop.time_budget({"time_budget_s": __import__("yaml").safe_load(budget), "phases": [{}]})


def test_budget_is_refused_for_several_phases() -> None:
    with pytest.raises(UserError, match="single-phase run; this one has 2 phases"):
        loop.time_budget({"time_budget_s": 60, "phases": [{}, {}]})


def test_run_trains_the_epochs_that_fit_its_budget(tmp_path, clock: FakeClock) -> None:
    result = _run(tmp_path, "train.time_budget_s=450")
    assert result.epoch == 4  # 4 epochs of 100 s fit in 450 s, not the configured 20
    checkpoint = read_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert checkpoint["planned_epochs"] == 4 and checkpoint["train_seconds"] == pytest.approx(400)


def test_schedule_spans_the_planned_epochs(tmp_path, clock: FakeClock) -> None:
    _run(tmp_path, "train.time_budget_s=450")
    with open(tmp_path / "run" / "metrics.csv") as handle:
        rates = [float(row["lr"]) for row in csv.DictReader(handle)]
    expected = [1e-2 * 0.5 * (1 + math.cos(math.pi * epoch / 4)) for epoch in range(4)]
    assert rates == pytest.approx(expected)


def test_resumed_run_continues_the_plan_and_the_seconds_spent(tmp_path, clock: FakeClock,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real_epoch = loop._train_epoch

    def interrupted(setup, state, progress, *args):
        if progress.epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(setup, state, progress, *args)

    monkeypatch.setattr(loop, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "train.time_budget_s=450")
    monkeypatch.setattr(loop, "_train_epoch", real_epoch)
    result = _run(tmp_path, "train.time_budget_s=450", resume=True)
    assert result.epoch == 4
    checkpoint = read_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert checkpoint["train_seconds"] == pytest.approx(400)
