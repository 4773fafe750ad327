"""The training engine: data, phases, optimisation, validation, checkpoints, logging.

A family (``models.base.Family``) supplies the network, targets, loss, parameter groups and
post-processing; everything else is here and never branches on a family's name. One run::

    samples ─ SampleDataset(augment, family.target_builder) ─ DataLoader(DistributedSampler)
      for phase in cfg['train']['phases']:            # freeze, optimiser, schedule, loss weights
        for epoch in phase:                           # forward → loss → backward (accumulate,
          train one epoch                             #   clip, AMP, warm-up) → optimiser step
          validate whole images (tiled inference → family.postprocess → family.evaluate)
          metrics.csv, TensorBoard, checkpoints/latest.pt and best.pt (rank 0)

``--resume`` restarts at the epoch after the checkpoint with model, optimiser, scheduler,
step counter and every RNG restored; data order and augmentation depend only on
(seed, epoch, index), so a resumed run is bit-identical to an uninterrupted one on CPU.
"""


from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from engine import checkpoint as ckpt
from engine.data import build_loader, set_loader_epoch
from engine.distributed import DistInfo, barrier, mean_across
from engine.optim import build_optimizer, build_scheduler
from engine.records import MetricsTable, progress_bar, tensorboard_writer
from engine.validate import validate
from loader.keys import IMAGE
from misc.errors import UserError
from misc.precision import autocast_dtype, channels_last_allowed
from models.base import Family, TrainingData
from models.checkpoint import load_state
from models.tasks import task_kind

log = logging.getLogger(__name__)


class NonFiniteLoss(UserError):
    """Training stopped on a NaN/inf loss; the message names the step and the loss term."""


@dataclass
class TrainResult:
    """What :func:`train` leaves behind: the trained network and the last scores."""

    net: nn.Module
    epoch: int
    step: int
    best_metric: float | None
    last_scores: dict[str, float] = field(default_factory=dict)


@dataclass
class Loop:
    """Mutable state of a run (what a checkpoint saves besides the weights)."""

    epoch: int = 0
    step: int = 0
    best_metric: float | None = None
    planned_epochs: int | None = None  # epochs of a time-budgeted run (train.time_budget_s), else None
    seconds: float = 0.0  # wall seconds of the finished epochs, over resumes


def run_epochs(phases: list[dict], loop: Loop) -> int:
    """Epochs the run trains: the planned ones of a time-budgeted run, else all the phases'."""
    return loop.planned_epochs if loop.planned_epochs is not None else sum(int(phase["epochs"]) for phase in phases)


def budgeted_epochs(budget_s: float, spent_s: float, epoch_s: float, done: int, most: int) -> int:
    """Epochs of a time-budgeted run after ``done`` of them: ``done`` plus as many more epochs of
    ``epoch_s`` seconds as fit in the ``budget_s - spent_s`` seconds left, at most ``most`` (the
    phase's configured epochs) and at least 1."""
    more = max(0, math.floor((budget_s - spent_s) / max(epoch_s, 1e-9)))
    return max(1, min(most, done + more))


def phase_of(phases: list[dict], epoch: int) -> int:
    """Index of the phase that global ``epoch`` (0-based) belongs to."""
    end = 0
    for index, phase in enumerate(phases):
        end += int(phase["epochs"])
        if epoch < end:
            return index
    return len(phases) - 1


def phase_start(phases: list[dict], index: int) -> int:
    """Global epoch at which phase ``index`` starts."""
    return sum(int(phase["epochs"]) for phase in phases[:index])


def training_amp_dtype(train_cfg: dict, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of training (:func:`misc.precision.autocast_dtype` of ``train.amp`` on
    CUDA and ``train.amp_cpu`` on CPU)."""
    return autocast_dtype(device, bool(train_cfg.get("amp", False)), bool(train_cfg.get("amp_cpu", False)),
                          "train.amp_cpu")


def training_channels_last(net: nn.Module, train_cfg: dict, device: torch.device, amp_dtype: torch.dtype | None) -> bool:
    """``train.channels_last`` where oneDNN allows it (:func:`misc.precision.channels_last_allowed`)."""
    return channels_last_allowed(net, bool(train_cfg.get("channels_last", False)), device, amp_dtype,
                                 "train.channels_last")


def image_tensor(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch of images as (N, 3, H, W) float32 in 0-255 on ``device``.

    Args:
        images: (N, H, W, 3) uint8, or (N, 3, H, W) float in 0-255 (as a target builder may give).
    """
    out = images.to(device, non_blocking=True)
    out = out.permute(0, 3, 1, 2).float() if out.dtype == torch.uint8 else out.float()
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out.contiguous()


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``amp_dtype`` on ``device`` (a no-op context for None: float32)."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def batch_to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    out = {}
    for key, value in batch.items():
        if key == IMAGE:
            out[key] = image_tensor(value, device, channels_last)
        elif isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
        else:
            out[key] = value
    return out


def _check_finite(values: torch.Tensor, names: list[str], epoch: int, step: int, phase: str) -> None:
    """Stop with one clear line when the loss or a term is NaN/inf."""
    if bool(torch.isfinite(values).all()):
        return
    bad = [f"{name}={value:g}" for name, value in zip(names, values.tolist()) if not math.isfinite(value)]
    raise NonFiniteLoss(
        f"non-finite loss at epoch {epoch + 1}, step {step + 1} (phase '{phase}'): {', '.join(bad)}; "
        "lower the learning rate, enable train.clip_grad_norm, or check the data"
    )


@dataclass(frozen=True)
class StepOptions:
    """Per-step settings of a run, from the ``train`` section and the device."""

    accumulate: int
    clip_grad_norm: float | None
    log_every: int
    amp_dtype: torch.dtype | None
    channels_last: bool


@dataclass
class Setup:
    """Everything a run needs besides the loop state."""

    family: Family
    net: nn.Module
    cfg: dict
    run_dir: Path
    device: torch.device
    info: DistInfo
    train_set: Any
    val_samples: Any
    quiet: bool = False
    sample_weights: Any = None  # (len(train_set),) sampling weights from family.sample_weights, or None
    family_data: TrainingData | None = None  # the family's own data (Family.training_data), or None


@dataclass
class PhaseState:
    """What one phase trains with: its config, optimiser, scheduler, AMP scaler and the
    (possibly DDP-wrapped) model that ``family.forward`` calls."""

    index: int
    name: str
    config: dict
    model: nn.Module
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    weights: dict[str, float]


def phase_loss_weights(phase: dict) -> dict[str, float]:
    """A phase's ``loss_weights`` as floats (empty when it names none)."""
    return {key: float(value) for key, value in (phase.get("loss_weights") or {}).items()}


def _start_phase(setup: Setup, index: int, options: StepOptions, resume: dict | None, loop: Loop) -> PhaseState:
    """Freeze, build loader, optimiser, scheduler and scaler of phase ``index``; restore their
    states from ``resume`` when it was saved inside this phase. The schedule of a time-budgeted
    run spans ``loop.planned_epochs``."""
    cfg, info, device = setup.cfg, setup.info, setup.device
    phase = cfg["train"]["phases"][index]
    name = str(phase.get("name", f"phase{index}"))
    groups = setup.family.parameter_groups(setup.net, phase)
    seed = int(cfg["train"]["seed"])
    own = setup.family_data
    batch_sampler = own.batch_sampler(phase, seed, info.rank, info.world_size) if own and own.batch_sampler else None
    loader = build_loader(setup.train_set, int(phase["batch_size"]), info, seed, int(cfg["data"].get("num_workers", 0)), device,
                          weights=setup.sample_weights, batch_sampler=batch_sampler)
    optimizer = build_optimizer(groups, phase.get("optimizer") or {}, name)
    steps_per_epoch = max(1, math.ceil(len(loader) / options.accumulate))
    horizon = (lambda: int(loop.planned_epochs)) if loop.planned_epochs is not None else None
    scheduler = build_scheduler(optimizer, phase, steps_per_epoch, int(cfg["train"].get("warmup_steps", 0)), horizon)
    scaler = torch.amp.GradScaler(device.type) if options.amp_dtype == torch.float16 else None
    if resume is not None and int(resume["phase"]) == index:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
    model: nn.Module = setup.net
    if info.distributed:
        model = DistributedDataParallel(setup.net, device_ids=[device.index] if device.type == "cuda" else None)
    weights = phase_loss_weights(phase)
    first = phase_start(cfg["train"]["phases"], index)
    log.info(
        "phase '%s' (%d/%d): epochs %d-%d, batch %d per process x %d process(es), freeze %s",
        name, index + 1, len(cfg["train"]["phases"]), first + 1, first + int(phase["epochs"]),
        int(phase["batch_size"]), info.world_size, phase.get("freeze") or [],
    )
    return PhaseState(index, name, phase, model, loader, optimizer, scheduler, scaler, weights)


def _checkpoint(setup: Setup, loop: Loop, state: PhaseState) -> dict:
    """The checkpoint dict of the run after ``loop.epoch`` epochs (see :mod:`engine.checkpoint`)."""
    return {
        "model": setup.net.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "epoch": loop.epoch,
        "step": loop.step,
        "phase": state.index,
        "rng": ckpt.rng_state(),
        "config": setup.cfg,
        "family": setup.cfg["family"],
        "norm_stats": setup.family.norm_stats,
        "family_state": setup.family.extra_state,
        "best_metric": loop.best_metric,
        "planned_epochs": loop.planned_epochs,
        "train_seconds": loop.seconds,
    }


@dataclass
class Recorder:
    """Rank 0's outputs: ``metrics.csv``, TensorBoard and checkpoints."""

    setup: Setup
    table: MetricsTable
    writer: Any

    def end_epoch(self, loop: Loop, state: PhaseState, train_scores: dict[str, float], scores: dict[str, float],
                  overlays: list[np.ndarray], improved: bool, seconds: tuple[float, float]) -> None:
        """Write the epoch's row, scalars and overlays, then ``latest.pt`` (and ``best.pt``)."""
        row = {"epoch": loop.epoch, "phase": state.name, "step": loop.step, "lr": train_scores.pop("lr")}
        row.update({f"train_{key}": value for key, value in train_scores.items()})
        row.update({f"val_{key}": value for key, value in scores.items()})
        row.update({"train_seconds": round(seconds[0], 3), "val_seconds": round(seconds[1], 3)})
        self.table.append(row)
        for key, value in scores.items():
            self.writer.add_scalar(f"val/{key}", value, loop.step)
        for index, picture in enumerate(overlays):
            self.writer.add_image(f"val/overlay_{index}", picture, loop.step, dataformats="HWC")
        self.writer.flush()
        shown = " ".join(f"{key} {value:.4f}" for key, value in scores.items())
        log.info(
            "epoch %d/%d done: loss %.4f %s(%.1fs + %.1fs)%s", loop.epoch,
            run_epochs(self.setup.cfg["train"]["phases"], loop), train_scores["loss"],
            f"val {shown} " if shown else "", seconds[0], seconds[1], " *best*" if improved else "",
        )
        checkpoint = _checkpoint(self.setup, loop, state)
        folder = self.setup.run_dir / "checkpoints"
        ckpt.save_checkpoint(folder / "latest.pt", checkpoint)
        if improved:
            ckpt.save_checkpoint(folder / "best.pt", checkpoint)


def time_budget(train_cfg: dict) -> float | None:
    """``train.time_budget_s``: wall seconds the run may train (None: train every configured
    epoch). Only single-phase runs take one.

    Raises:
        UserError: a budget that is not a positive number, or one for several phases.
    """
    budget = train_cfg.get("time_budget_s")
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
        raise UserError(f"train.time_budget_s must be a positive number of seconds, got {budget!r}")
    if len(train_cfg["phases"]) != 1:
        raise UserError(f"train.time_budget_s plans the epochs of a single-phase run; this one has {len(train_cfg['phases'])} phases")
    return float(budget)


def _plan_within_budget(setup: Setup, loop: Loop, budget_s: float, spent_s: float, epoch_s: float) -> None:
    """Set ``loop.planned_epochs`` to what fits in the budget (times averaged over processes, so
    every process plans the same) and log a change."""
    spent_s, epoch_s = mean_across(torch.tensor([spent_s, epoch_s], dtype=torch.float64, device=setup.device), setup.info).tolist()
    most = int(setup.cfg["train"]["phases"][0]["epochs"])
    planned = budgeted_epochs(budget_s, spent_s, epoch_s, loop.epoch, most)
    if planned != loop.planned_epochs and setup.info.is_main:
        log.info("train.time_budget_s: %d of at most %d epochs fit (%.0f s per epoch, %.0f s of %.0f s spent)",
                 planned, most, epoch_s, spent_s, budget_s)
    loop.planned_epochs = planned


def _refresh_lr(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Recompute the current learning rates after the schedule's horizon changed."""
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)


def train(setup: Setup, resume: dict | None = None) -> TrainResult:
    """Run (or continue) the configured phases.

    With ``train.time_budget_s`` (single-phase runs) the epochs are planned from the measured
    epoch times: the first epoch runs with the configured epochs as the schedule's horizon, and
    after each epoch the run keeps as many more epochs, at the mean wall time of this process's
    epochs so far, as fit in what is left of the budget, never more than configured. A resumed
    run continues the plan and the seconds spent that its checkpoint records.

    Args:
        setup: the built family, network (on its device), datasets and run directory.
        resume: a checkpoint dict from :func:`models.checkpoint.read_checkpoint`, already
            checked with :func:`engine.checkpoint.check_compatible`; its weights are loaded here.

    Returns:
        :class:`TrainResult` with the trained (unwrapped) network.
    """
    cfg, info, net = setup.cfg, setup.info, setup.net
    train_cfg = cfg["train"]
    phases = train_cfg["phases"]
    budget_s = time_budget(train_cfg)
    amp_dtype = training_amp_dtype(train_cfg, setup.device)
    options = StepOptions(
        accumulate=max(1, int(train_cfg.get("accumulate", 1))),
        clip_grad_norm=train_cfg.get("clip_grad_norm"),
        log_every=max(1, int(train_cfg.get("log_every", 10))),
        amp_dtype=amp_dtype,
        channels_last=training_channels_last(net, train_cfg, setup.device, amp_dtype),
    )
    if options.channels_last:
        net.to(memory_format=torch.channels_last)
    select = str(train_cfg.get("select_metric") or task_kind(setup.family.task_for("train")).select_metric)
    val_every = max(1, int(train_cfg.get("val_every", 1)))

    loop = Loop()
    if resume is not None:
        load_state(net, resume["model"], "--resume checkpoint")
        loop = Loop(epoch=int(resume["epoch"]), step=int(resume["step"]), best_metric=resume.get("best_metric"),
                    seconds=float(resume.get("train_seconds") or 0.0))
    if budget_s is not None:
        most = int(phases[0]["epochs"])
        planned = resume.get("planned_epochs") if resume is not None else None
        loop.planned_epochs = min(most, max(loop.epoch, 1, int(planned or most)))
    recorder = None
    if info.is_main:
        writer = tensorboard_writer(setup.run_dir, loop.step if resume is not None else None)
        recorder = Recorder(setup, MetricsTable(setup.run_dir / "metrics.csv", loop.epoch), writer)
    if loop.epoch >= run_epochs(phases, loop):
        log.info("nothing to do: the checkpoint already completed all %d epochs", run_epochs(phases, loop))

    scores: dict[str, float] = {}
    epoch_seconds: list[float] = []
    while loop.epoch < run_epochs(phases, loop):
        state = _start_phase(setup, phase_of(phases, loop.epoch), options, resume, loop)
        if resume is not None:
            ckpt.set_rng_state(resume["rng"])  # last: nothing above may draw from the restored generators
            resume = None
        while loop.epoch < min(run_epochs(phases, loop), phase_start(phases, state.index) + int(state.config["epochs"])):
            started = time.time()
            train_scores = _train_epoch(setup, state, loop, options, recorder.writer if recorder else None)
            loop.epoch += 1
            validated = time.time()
            if budget_s is not None:
                spent = validated - started
                mean_epoch_s = (sum(epoch_seconds) + spent) / (len(epoch_seconds) + 1)
                _plan_within_budget(setup, loop, budget_s, loop.seconds + spent, mean_epoch_s)
                _refresh_lr(state.scheduler)
            scores, overlays, improved = {}, [], False
            last = loop.epoch == run_epochs(phases, loop)
            if recorder and len(setup.val_samples) and (loop.epoch % val_every == 0 or last):
                scores, overlays = validate(setup.family, net, setup.val_samples, cfg, setup.device, options.amp_dtype,
                                            own_items=setup.family_data is not None)
                if select not in scores:
                    raise UserError(f"train.select_metric '{select}' is not a validation score (have {sorted(scores)})")
                improved = math.isfinite(scores[select]) and (loop.best_metric is None or scores[select] > loop.best_metric)
                loop.best_metric = scores[select] if improved else loop.best_metric
            epoch_seconds.append(time.time() - started)
            loop.seconds += epoch_seconds[-1]
            if recorder:
                seconds = (validated - started, time.time() - validated)
                recorder.end_epoch(loop, state, train_scores, scores, overlays, improved, seconds)
            barrier(info)
    if recorder:
        recorder.writer.close()
    return TrainResult(net=net, epoch=loop.epoch, step=loop.step, best_metric=loop.best_metric, last_scores=scores)


def train_step(
    family: Family, model: nn.Module, batch: dict[str, Any], weights: dict[str, float], device: torch.device,
    amp_dtype: torch.dtype | None, scaler: torch.amp.GradScaler | None = None, accumulate: int = 1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward, loss and backward of one micro-batch, as training runs it (and the budget
    planner times it): ``family.forward`` and ``family.loss`` under autocast to ``amp_dtype``,
    then the gradients of ``loss / accumulate`` (scaled by ``scaler`` under AMP fp16) added to
    the parameters' ``.grad``.

    Args:
        model: the network ``family.forward`` calls (possibly DDP-wrapped), in train mode.
        batch: a collated batch on ``device`` (see :func:`batch_to_device`).
        weights: the phase's loss-term weights.

    Returns:
        The loss (0-dim) and its named terms, detached, in the autocast dtype's precision.
    """
    with autocast_context(device, amp_dtype):
        outputs = family.forward(model, batch)
        loss, terms = family.loss(outputs, batch, weights)
    scaled = loss / accumulate
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    return loss.detach(), {name: term.detach() for name, term in terms.items()}


def optimizer_step(
    optimizer: torch.optim.Optimizer, params: list[nn.Parameter], clip_grad_norm: float | None,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """Unscale (AMP fp16), clip the gradient norm of ``params`` to ``clip_grad_norm`` (None or 0:
    no clipping), step and zero the gradients.

    Returns:
        The learning rate this step used (of the first parameter group).
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, float(clip_grad_norm))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer.param_groups[0]["lr"]


def _train_epoch(setup: Setup, state: PhaseState, loop: Loop, options: StepOptions, writer: Any) -> dict[str, float]:
    """One pass over this process's shard.

    Returns:
        The mean loss and terms over its micro-batches, and ``lr``: the learning rate of the
        epoch's last optimiser step.
    """
    family, device, info = setup.family, setup.device, setup.info
    model, loader, optimizer, scaler = state.model, state.loader, state.optimizer, state.scaler
    set_loader_epoch(loader, loop.epoch)
    if hasattr(setup.train_set, "set_epoch"):
        setup.train_set.set_epoch(loop.epoch)
    loader.generator.manual_seed(int(setup.cfg["train"]["seed"]) * 100_003 + loop.epoch)
    family.begin_epoch(setup.net, setup.train_set, loader.batch_sampler if setup.family_data else None, loop.epoch)
    family.train_mode(setup.net, state.config)
    sums: dict[str, float] = {}
    count = 0
    n_batches = len(loader)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    lr = optimizer.param_groups[0]["lr"]
    optimizer.zero_grad(set_to_none=True)
    accumulate = options.accumulate
    total = run_epochs(setup.cfg["train"]["phases"], loop)
    bar = progress_bar(loader, n_batches, f"epoch {loop.epoch + 1}/{total}", info.is_main and not setup.quiet)
    for index, batch in enumerate(bar):
        batch = batch_to_device(batch, device, options.channels_last)
        last_micro = (index + 1) % accumulate == 0 or index + 1 == n_batches
        sync = contextlib.nullcontext() if last_micro or not info.distributed else model.no_sync()
        with sync:
            loss, terms = train_step(family, model, batch, state.weights, device, options.amp_dtype, scaler, accumulate)
            names = ["loss", *terms]
            values = mean_across(torch.stack([loss.float(), *(t.float() for t in terms.values())]), info)
            _check_finite(values.cpu(), names, loop.epoch, loop.step, state.name)
        for name, value in zip(names, values.tolist()):
            sums[name] = sums.get(name, 0.0) + value
        count += 1
        if not last_micro:
            continue
        lr = optimizer_step(optimizer, params, options.clip_grad_norm, scaler)
        state.scheduler.step()
        loop.step += 1
        if info.is_main and loop.step % options.log_every == 0:
            shown = " ".join(f"{n} {v:.4f}" for n, v in zip(names, values.tolist()))
            log.info("epoch %d step %d %s lr %.3g", loop.epoch + 1, loop.step, shown, lr)
            bar.set_postfix(loss=f"{values[0].item():.4f}")
            for name, value in zip(names, values.tolist()):
                writer.add_scalar(f"train/{name}", value, loop.step)
            writer.add_scalar("train/lr", lr, loop.step)
    means = {name: total / max(1, count) for name, total in sums.items()}
    return {**means, "lr": lr}
