"""A whole training run as ``train.py`` asks for it: resolve the config, build the family,
network and data, then train (or print ``--summary``)."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import config as config_module
from engine import checkpoint as ckpt
from engine import distributed
from engine.data import ImageView, build_splits, build_train_dataset
from engine.loop import Setup, TrainResult, train
from engine.summary import network_summary
from misc.errors import UserError
from models import defaults_path, get_family, load_plugins
from models.checkpoint import read_checkpoint

log = logging.getLogger(__name__)


@dataclass
class RunRequest:
    """The choices of one ``train.py`` invocation (see ``train.py --help``)."""

    model: str
    data: str | None = None
    profile: str | None = None
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    out: str | None = None
    resume: str | bool | None = None
    summary: bool = False
    device: str = "auto"
    num_threads: int | None = None
    quiet: bool = False
    verbose: bool = False
    plugins: list[str] = field(default_factory=list)


def check_train_config(cfg: dict, source: str) -> None:
    """Refuse a config without the sections and phase keys the engine reads.

    Raises:
        UserError: naming the missing key.
    """
    for section in ("data", "train", "infer"):
        if not isinstance(cfg.get(section), dict):
            raise UserError(f"{source}: missing section '{section}'")
    phases = cfg["train"].get("phases")
    if not isinstance(phases, list) or not phases:
        raise UserError(f"{source}: train.phases must be a non-empty list of phases")
    for index, phase in enumerate(phases):
        for key in ("epochs", "batch_size"):
            if not isinstance(phase, dict) or not isinstance(phase.get(key), int) or phase[key] < 1:
                raise UserError(f"{source}: train.phases[{index}].{key} must be a positive integer")


def resume_path(request: RunRequest) -> Path | None:
    """The checkpoint ``--resume`` names: a path, or ``<--out>/checkpoints/latest.pt``.

    Raises:
        UserError: ``--resume`` without a path and without ``--out``.
    """
    if not request.resume:
        return None
    if isinstance(request.resume, str):
        return Path(request.resume)
    if request.out is None:
        raise UserError("--resume without a checkpoint path needs --out RUN_DIR (resumes RUN_DIR/checkpoints/latest.pt)")
    return Path(request.out) / "checkpoints" / "latest.pt"


def resolve_config(request: RunRequest, resume: dict | None, defaults: Path | None) -> dict:
    """The run's configuration.

    A fresh run (or ``--resume`` with ``--profile``) resolves the family defaults ← profile ←
    ``--config`` ← ``--set``; ``--resume`` without ``--profile`` continues the checkpoint's
    config ← ``--config`` ← ``--set``. ``--data`` replaces ``data.source`` last.
    """
    if resume is None or request.profile is not None:
        cfg = config_module.load_config(request.model, request.profile, request.config, request.overrides, defaults)
    else:
        cfg = resume["config"]
        if request.config is not None:
            cfg = config_module.merge(cfg, config_module.read_yaml(request.config) or {}, str(request.config))
        for text in request.overrides:
            cfg = config_module.merge(cfg, config_module.parse_override(text), f"--set {text}")
    if request.data is not None:
        cfg["data"]["source"] = request.data
    return cfg


def default_run_dir(family: str) -> Path:
    """``runs/<family>-<UTC timestamp>``."""
    return Path("runs") / f"{family}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run(request: RunRequest) -> TrainResult | None:
    """Resolve the config, build family, network and data, and train (or print ``--summary``).

    Returns:
        The :class:`TrainResult`, or None for ``--summary``.

    Raises:
        UserError: unknown family/profile/data kind, bad config, incompatible or unreadable
            ``--resume`` checkpoint, empty dataset, NaN/inf loss.
    """
    load_plugins(request.plugins)
    family_cls = get_family(request.model)
    checkpoint_path = resume_path(request)
    resume = read_checkpoint(checkpoint_path) if checkpoint_path is not None else None
    cfg = resolve_config(request, resume, defaults_path(request.model))
    if resume is not None:
        ckpt.check_compatible(resume, request.model, cfg, checkpoint_path)
    check_train_config(cfg, f"config of '{request.model}'")
    if request.num_threads:
        torch.set_num_threads(int(request.num_threads))

    device = distributed.resolve_device(request.device, distributed.local_rank_from_env())
    seed_everything(int(cfg["train"]["seed"]))
    family = family_cls(cfg)
    net = family.build_network().to(device)
    if request.summary:
        print(network_summary(net, family.example_input().to(device)))
        return None

    info = distributed.init_distributed(device)
    try:
        if request.out is not None:
            run_dir = Path(request.out)
        elif checkpoint_path is not None:
            run_dir = checkpoint_path.resolve().parent.parent
        else:
            run_dir = default_run_dir(request.model)
        if resume is None and (run_dir / "checkpoints" / "latest.pt").is_file():
            raise UserError(f"{run_dir} already holds a run (checkpoints/latest.pt); pass --resume to continue it or another --out")
        config_module.setup_logging(run_dir if info.is_main else None, request.quiet or not info.is_main, request.verbose)
        train_samples, val_samples = build_splits(cfg["data"], int(cfg["train"]["seed"]))
        family.norm_stats = resume.get("norm_stats") if resume is not None else family.fit_norm_stats(ImageView(train_samples))
        setup = Setup(
            family=family, net=net, cfg=cfg, run_dir=run_dir, device=device, info=info,
            train_set=build_train_dataset(family, train_samples, cfg, run_dir / "cache"), val_samples=val_samples, quiet=request.quiet,
            sample_weights=family.sample_weights(train_samples),
        )
        if info.is_main:
            config_module.write_run_record(run_dir, cfg)
            if not len(val_samples):
                log.warning("no validation samples (see data.val_source / data.val_fraction): only latest.pt is written")
            log.info(
                "training %s (profile %s) on %s: %d training / %d validation samples, run folder %s",
                request.model, cfg.get("profile"), device, len(train_samples), len(val_samples), run_dir,
            )
        return train(setup, resume)
    finally:
        distributed.shutdown()
