"""benchmarks/bench_train.py: the steps it times are the steps it was asked for."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from tests.conftest import REPO_ROOT

#: The published two-phase HoVer-Net schedule, shrunk to a fast-mode quarter-width net on
#: 256 px tiles, batch 1.
TINY_PAPER = [
    "model.pretrained=null", "model.mode=fast", "model.encoder.width=0.25", "model.decoder.width=0.25",
    "infer.input_size=256", "infer.output_size=164", "data.synthetic.size=256", "data.patch_size=256",
    "train.phases.0.batch_size=1",
]


def _bench_module() -> ModuleType:
    """benchmarks/bench_train.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_train", REPO_ROOT / "benchmarks" / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_times_one_epoch_of_the_first_phase_of_a_multi_phase_profile() -> None:
    row = _bench_module().bench_train("hovernet", "original", "paper", TINY_PAPER, steps=2, device="cpu")
    assert row["steps"] == 2 and row["batch_size"] == 1
    assert row["steps_per_s"] > 0


def test_warmup_times_only_the_second_epoch() -> None:
    row = _bench_module().bench_train("hovernet", "original", "paper", TINY_PAPER, steps=2, device="cpu", warmup=True)
    assert row["steps"] == 2 and row["warmup"] is True
