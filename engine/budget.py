"""Fit a training run into a wall-clock budget on the host at hand.

Hosts differ severalfold in speed: the HoVer-Net ``cpu`` profile trains at about 3.5 steps/s on
one 2-core CPU of this project and 1.7 steps/s on another, so a fixed epoch count cannot keep a
recipe within its budget. :func:`measure` times, on this host and on the run's own training
data, what the run spends its time on:

- one optimiser step of the first phase (its batch size, autocast, gradient scaling, clipping
  and memory format: the engine's own :func:`engine.loop.train_step` and
  :func:`engine.loop.optimizer_step`) and the loader's cost per training sample (reading,
  augmentation, targets);
- one inference window with the profile's TTA, plus the BatchNorm adaptation pass when
  ``infer.bn_adapt`` is on (scoring the validation images after training).

:func:`plan_epochs` then picks the most epochs (at most the profile's) whose training and
scoring, with a safety margin, fit the budget, and ``python -m engine.budget`` prints that number.
With ``--seconds`` it prints :func:`training_seconds` instead: the budget left once the scoring
is set aside, for ``train.time_budget_s``, with which the engine plans the epochs from whole
epochs measured while training (what the MoNuSeg recipes do).

The margin (:data:`SAFETY_MARGIN`) is there because a short timing is a sample of a host whose
speed drifts: three timings of the same step on one 2-core Xeon gave 0.44, 0.60 and 0.77 s
while the training that followed ran at 0.60-0.64 s per step.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from config import load_config, stage_names
from engine.data import ImageView, build_train_dataset, read_source
from engine.distributed import resolve_device
from engine.loop import (
    batch_to_device, optimizer_step, phase_loss_weights, train_step, training_amp_dtype, training_channels_last,
)
from engine.optim import build_optimizer
from inference.folder import list_images
from inference.predict import family_predictor, inference_precision, with_infer_overrides
from inference.tiling import TileSpec, window_count
from misc.errors import UserError, cli_main
from misc.io import read_image
from models import get_family

log = logging.getLogger(__name__)

#: Factor on the measured times when planning (see the module docstring).
SAFETY_MARGIN = 1.25


@dataclass(frozen=True)
class HostTimes:
    """Seconds this host spends on the units of a training run and its scoring.

    Attributes:
        step_s: one optimiser step of a first-phase batch (forward, loss, backward, update).
        sample_s: the loader's work for one training sample.
        window_s: one inference window with the profile's TTA and BatchNorm adaptation pass.
    """

    step_s: float
    sample_s: float
    window_s: float

    def epoch_seconds(self, samples: int, batch_size: int) -> float:
        """Seconds of one epoch over ``samples`` training samples in batches of ``batch_size``,
        loading and stepping one after the other (loader workers would overlap them: an upper bound)."""
        return math.ceil(samples / batch_size) * (self.step_s + batch_size * self.sample_s)


def plan_epochs(
    times: HostTimes, samples: int, batch_size: int, max_epochs: int, budget_s: float, windows: int = 0,
    margin: float = SAFETY_MARGIN,
) -> int:
    """The most epochs, from 1 to ``max_epochs``, whose training plus the inference of
    ``windows`` windows, each taking ``margin`` times the measured seconds, fits in ``budget_s``
    seconds (1 when not even one epoch fits)."""
    if samples < 1 or batch_size < 1 or max_epochs < 1:
        raise UserError(f"plan_epochs: samples, batch size and epochs must be >= 1, got {samples}, {batch_size}, {max_epochs}")
    left = budget_s / margin - windows * times.window_s
    return max(1, min(max_epochs, math.floor(left / times.epoch_seconds(samples, batch_size))))


def training_seconds(budget_s: float, windows: int, window_s: float, margin: float = SAFETY_MARGIN) -> float:
    """Seconds of ``budget_s`` left for training once the inference of ``windows`` windows, each
    taking ``margin`` times the measured ``window_s``, is set aside (at least 1)."""
    return max(1.0, budget_s - margin * windows * window_s)


def _median_seconds(work: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    """Median wall time of ``repeats`` calls of ``work`` (``sync`` waits for the device)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        sync()
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


def _synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def time_training(family: Any, dataset: Any, device: torch.device, repeats: int = 5) -> tuple[float, float]:
    """``(step_s, sample_s)``: a first-phase optimiser step and the loader's work per sample.

    Args:
        family: a :class:`models.base.Family` (its ``norm_stats`` already fitted).
        dataset: the training dataset (``engine.data.build_train_dataset``), at least one batch;
            its samples are read twice and the second reading is timed, so per-sample maps the
            engine caches after the first epoch (e.g. FullNet's weight maps) count as cached.
        repeats: timed steps after two warm-up steps, each on its own batch.
    """
    cfg = family.cfg
    phase = cfg["train"]["phases"][0]
    batch_size = int(phase["batch_size"])
    if len(dataset) < batch_size:
        raise UserError(f"time_training: {len(dataset)} training samples, fewer than one batch of {batch_size}")
    indices = [index % len(dataset) for index in range(batch_size * (repeats + 2))]
    for index in indices:  # first reading: fills the per-sample cache, warms the reader
        dataset[index]
    start = time.perf_counter()
    items = [dataset[index] for index in indices]
    sample_s = (time.perf_counter() - start) / len(items)

    net = family.build_network().to(device)
    amp_dtype = training_amp_dtype(cfg["train"], device)
    channels_last = training_channels_last(net, cfg["train"], device, amp_dtype)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(family.parameter_groups(net, phase), phase.get("optimizer") or {}, "timing")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    family.train_mode(net, phase)
    batches = iter([
        batch_to_device(default_collate(items[first:first + batch_size]), device, channels_last)
        for first in range(0, len(items), batch_size)
    ])
    weights = phase_loss_weights(phase)

    def step() -> None:
        train_step(family, net, next(batches), weights, device, amp_dtype, scaler)
        optimizer_step(optimizer, params, cfg["train"].get("clip_grad_norm"), scaler)

    sync = _synchronizer(device)
    _median_seconds(step, 2, sync)
    return _median_seconds(step, repeats, sync), sample_s


def time_inference(family: Any, device: torch.device, repeats: int = 1) -> float:
    """Seconds per inference window: a batch of ``infer.batch_size`` random windows through
    ``family.predict`` (with the profile's TTA), plus one plain pass when ``infer.bn_adapt``
    is on, divided by the batch size; in ``infer.py``'s precision and memory format
    (:func:`inference.predict.inference_precision`). One warm-up run comes
    first (with 8-fold TTA a run is 9 network passes of the batch, so one timed run suffices)."""
    infer_cfg = family.cfg["infer"]
    batch_size, size = int(infer_cfg.get("batch_size", 1)), int(infer_cfg["input_size"])
    net = family.build_network().to(device).eval()
    amp_dtype = inference_precision(family, net, device)
    windows = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    passes = [family_predictor(family, net, device, amp_dtype)]
    if float(infer_cfg.get("bn_adapt") or 0.0) > 0.0:
        passes.append(family_predictor(with_infer_overrides(family, tta=False), net, device, amp_dtype))

    def run() -> None:
        for predict in passes:
            predict(windows)

    sync = _synchronizer(device)
    _median_seconds(run, 1, sync)
    return _median_seconds(run, repeats, sync) / batch_size


def measure(family: Any, dataset: Any, device: torch.device) -> HostTimes:
    """:class:`HostTimes` of ``family``'s configuration on ``dataset`` and ``device``."""
    step_s, sample_s = time_training(family, dataset, device)
    return HostTimes(step_s=step_s, sample_s=sample_s, window_s=time_inference(family, device))


def score_windows(family: Any, image_shapes: Sequence[tuple[int, int]]) -> int:
    """Windows the family's tiler runs over images of these (H, W) shapes."""
    spec = TileSpec.from_config(family.cfg["infer"])
    return sum(window_count(shape, spec) for shape in image_shapes)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m engine.budget",
        description="Print the most epochs of a profile's single training phase that, with scoring, fit a "
        "wall-clock budget on this host (timed on the run's own training data).",
    )
    parser.add_argument("--model", required=True, help="family name, e.g. hovernet")
    parser.add_argument("--profile", default=None, help="profile of opt/<family>.yaml, e.g. cpu")
    parser.add_argument("--data", required=True, help="training data as train.py --data takes it")
    parser.add_argument("--score-images", default=None, metavar="DIR",
                        help="images inferred after training (their windows count against the budget)")
    parser.add_argument("--budget-s", type=float, required=True,
                        help="seconds left, from this command's start, for the timing, training and scoring")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as train.py --set (repeatable)")
    parser.add_argument("--seconds", action="store_true",
                        help="print the seconds left for training (for train.time_budget_s, which plans the epochs "
                             "while training) instead of epochs; only the inference is timed")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args(argv)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """Time this host, print the planned epochs (or, with ``--seconds``, the training seconds)
    on stdout and the reasoning on stderr.

    The timing itself (a few warm-up and timed steps, about 10-60 s) counts against ``--budget-s``.
    """
    started = time.monotonic()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    cfg = load_config(args.model, args.profile, overrides=args.overrides)
    if stage_names(cfg):
        raise UserError(f"engine.budget plans single-stage families; '{args.model}' trains the stages "
                        f"{stage_names(cfg)} in turn (give train.time_budget_s yourself)")
    phases = cfg["train"]["phases"]
    if len(phases) != 1:
        raise UserError(f"engine.budget plans single-phase profiles; '{args.model}' profile {args.profile} has {len(phases)} phases")
    device = resolve_device(args.device, None)
    family = get_family(args.model)(cfg)
    samples = read_source(args.data)
    family.norm_stats = family.fit_norm_stats(ImageView(samples))
    shapes = [read_image(path).shape[:2] for path in list_images(args.score_images)] if args.score_images else []
    windows = score_windows(family, shapes)
    if args.seconds:
        window_s = time_inference(family, device)
        budget_s = args.budget_s - (time.monotonic() - started)
        seconds = training_seconds(budget_s, windows, window_s)
        log.info("budget on %s: scoring %d windows x %.3f s = %.0f s; %.0f s left, %.0f s for training after "
                 "setting the scoring aside %.2fx", device, windows, window_s, windows * window_s, budget_s, seconds,
                 SAFETY_MARGIN)
        print(int(seconds))
        return 0
    with tempfile.TemporaryDirectory() as cache_dir:
        times = measure(family, build_train_dataset(family, samples, cfg, Path(cache_dir)), device)
    batch_size, max_epochs = int(phases[0]["batch_size"]), int(phases[0]["epochs"])
    budget_s = args.budget_s - (time.monotonic() - started)  # this planning is part of the budget
    epochs = plan_epochs(times, len(samples), batch_size, max_epochs, budget_s, windows)
    epoch_s = times.epoch_seconds(len(samples), batch_size)
    log.info(
        "budget on %s: step %.3f s + %.3f s/sample loading -> %.0f s per epoch of %d samples; scoring %d windows x %.3f s "
        "= %.0f s; %.0f s left, planned with %.2fx these times -> %d of the profile's %d epochs (%.0f s of training)",
        device, times.step_s, times.sample_s, epoch_s, len(samples), windows, times.window_s, windows * times.window_s,
        budget_s, SAFETY_MARGIN, epochs, max_epochs, epochs * epoch_s,
    )
    print(epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
