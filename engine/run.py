"""A whole training run as ``train.py`` asks for it: resolve the config, build the family,
network and data, then train (or print ``--summary``)."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import config as config_module
from engine import checkpoint as ckpt
from engine import distributed
from engine.data import ImageView, build_splits, build_train_dataset
from engine.loop import Setup, TrainResult, train
from engine.summary import network_summary
from inference.predict import StageChain
from misc.errors import UserError
from misc.io import atomic_write
from models import defaults_path, get_family, load_plugins
from models.checkpoint import load_checkpoint, read_checkpoint

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
    stage: str | None = None


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

    A staged family (a ``stages`` section, see :func:`run_stages`) trains its stages in order,
    or the one ``request.stage`` names.

    Returns:
        The :class:`TrainResult` (of the last stage trained), or None for ``--summary``.

    Raises:
        UserError: unknown family/profile/data kind, bad config, incompatible or unreadable
            ``--resume`` checkpoint, empty dataset, NaN/inf loss.
    """
    load_plugins(request.plugins)
    get_family(request.model)
    if request.num_threads:
        torch.set_num_threads(int(request.num_threads))
    defaults = defaults_path(request.model)
    fresh = config_module.load_config(request.model, request.profile, request.config, request.overrides, defaults)
    if config_module.stage_names(fresh):
        return run_stages(request, fresh)
    if request.stage is not None:
        raise UserError(f"--stage {request.stage}: family '{request.model}' has no stages")
    checkpoint_path = resume_path(request)
    resume = read_checkpoint(checkpoint_path) if checkpoint_path is not None else None
    cfg = resolve_config(request, resume, defaults)
    if request.out is not None:
        run_dir = Path(request.out)
    elif checkpoint_path is not None:
        run_dir = checkpoint_path.resolve().parent.parent
    else:
        run_dir = default_run_dir(request.model)
    if request.summary:
        print(_summary(request.model, cfg, request.device))
        return None
    if resume is not None:
        ckpt.check_compatible(resume, request.model, cfg, checkpoint_path)
    return train_one(request, cfg, run_dir, resume)


def _summary(model: str, cfg: dict, device_name: str) -> str:
    """The layer table of the network ``cfg`` builds."""
    device = distributed.resolve_device(device_name, distributed.local_rank_from_env())
    seed_everything(int(cfg["train"]["seed"]))
    family = get_family(model)(cfg)
    net = family.build_network().to(device)
    return network_summary(net, family.example_input().to(device))


def train_one(request: RunRequest, cfg: dict, run_dir: Path, resume: dict | None,
              previous: StageChain | None = None, shared_dir: Path | None = None) -> TrainResult:
    """Train one network (a single-stage family, or one stage) into ``run_dir``.

    The training data are the family's own when ``Family.training_data`` gives some, else the
    image samples of ``cfg['data']``.

    Args:
        cfg: the resolved config (a stage's: ``config.stage_config``).
        resume: the checkpoint to continue, already checked, or None.
        previous: the earlier stages of a staged family, run on whole images (their maps
            reach the stage's samples through ``Family.previous_sample_maps`` and its
            inference through ``Family.stage_input``).
        shared_dir: the folder every stage of a staged run shares (default ``run_dir``).
    """
    check_train_config(cfg, f"config of '{request.model}'" + (f", stage '{cfg['stage']}'" if cfg.get("stage") else ""))
    device = distributed.resolve_device(request.device, distributed.local_rank_from_env())
    seed_everything(int(cfg["train"]["seed"]))
    family = get_family(request.model)(cfg)
    family.previous = previous
    net = family.build_network().to(device)
    info = distributed.init_distributed(device)
    try:
        if resume is None and (run_dir / "checkpoints" / "latest.pt").is_file():
            raise UserError(f"{run_dir} already holds a run (checkpoints/latest.pt); pass --resume to continue it or another --out")
        config_module.setup_logging(run_dir if info.is_main else None, request.quiet or not info.is_main, request.verbose)
        family.extra_state = dict(resume.get("family_state") or {}) if resume is not None else {}
        own = family.training_data(net, run_dir, shared_dir or run_dir, device)
        if own is None:
            train_samples, val_samples = build_splits(cfg["data"], int(cfg["train"]["seed"]))
            norm_images: Any = ImageView(train_samples)
            counts = {"training samples": len(train_samples), "validation samples": len(val_samples)}
        else:
            val_samples, norm_images = list(own.val_items), own.norm_images
            counts = own.counts or {"training items": len(own.train_set), "validation items": len(val_samples)}
        family.norm_stats = resume.get("norm_stats") if resume is not None else family.fit_norm_stats(norm_images)
        setup = Setup(
            family=family, net=net, cfg=cfg, run_dir=run_dir, device=device, info=info,
            train_set=build_train_dataset(family, train_samples, cfg, run_dir / "cache") if own is None else own.train_set,
            val_samples=val_samples, quiet=request.quiet,
            sample_weights=family.sample_weights(train_samples) if own is None else None, family_data=own,
        )
        if info.is_main:
            config_module.write_run_record(run_dir, cfg)
            if not len(val_samples):
                log.warning("no validation samples (see data.val_source / data.val_fraction): only latest.pt is written")
            log.info(
                "training %s%s (profile %s) on %s: %s, run folder %s",
                request.model, f" stage '{cfg['stage']}'" if cfg.get("stage") else "", cfg.get("profile"), device,
                ", ".join(f"{count} {name}" for name, count in counts.items()), run_dir,
            )
        return train(setup, resume)
    finally:
        distributed.shutdown()


STAGES_RECORD = "stages.yaml"


def _pipeline_config(request: RunRequest, fresh: dict, out: Path) -> dict:
    """The whole config of a staged run: the one its folder records (``stages.yaml``) when
    resuming without ``--profile`` (``--config``/``--set`` laid over it), else ``fresh``."""
    record = out / STAGES_RECORD
    if not request.resume or request.profile is not None or not record.is_file():
        return fresh
    cfg = config_module.read_yaml(record)
    if request.config is not None:
        cfg = config_module.merge(cfg, config_module.read_yaml(request.config) or {}, str(request.config))
    for text in request.overrides:
        cfg = config_module.merge(cfg, config_module.parse_override(text), f"--set {text}")
    return cfg


def stage_checkpoint(out: Path, name: str) -> Path | None:
    """A trained stage's checkpoint: ``<out>/stages/<name>/checkpoints/best.pt``, else ``latest.pt``, else None."""
    folder = out / "stages" / name / "checkpoints"
    for file_name in ("best.pt", "latest.pt"):
        if (folder / file_name).is_file():
            return folder / file_name
    return None


def _earlier_stages(request: RunRequest, out: Path, names: list[str], name: str) -> StageChain | None:
    """The trained stages before ``name`` as a :class:`StageChain` (None for the first stage).

    Raises:
        UserError: an earlier stage has no checkpoint yet (names the command that trains it).
    """
    earlier = names[: names.index(name)]
    if not earlier:
        return None
    device = distributed.resolve_device(request.device, distributed.local_rank_from_env())
    stages = []
    for before in earlier:
        path = stage_checkpoint(out, before)
        if path is None:
            choices = "".join(f" --{flag} {value}" for flag, value in (("profile", request.profile), ("data", request.data),
                                                                        ("config", request.config)) if value is not None)
            raise UserError(
                f"stage '{name}' reads the outputs of stage '{before}', which has no checkpoint in {out}; train it "
                f"first: python train.py --model {request.model}{choices} --out {out} --stage {before}"
            )
        family, net, _ = load_checkpoint(path, device)
        stages.append((family, net))
    return StageChain(stages, device)


def run_stages(request: RunRequest, fresh: dict) -> TrainResult | None:
    """Train a staged family: every stage in order, or ``request.stage`` alone.

    Stage ``NAME`` trains as a run of its own in ``<out>/stages/NAME/`` (checkpoints,
    ``metrics.csv``, ``run.yaml``) with the config :func:`config.stage_config` gives; a later
    stage reads the earlier stages' checkpoints. ``--resume`` continues each stage from its
    ``latest.pt`` (a finished stage has nothing to do; a stage never started starts).
    When every stage has a checkpoint, ``<out>/checkpoints/best.pt`` holds them all
    (:func:`engine.checkpoint.stages_checkpoint`), which ``infer.py`` takes.
    """
    if isinstance(request.resume, str):
        raise UserError("a staged run resumes from its folder: --out RUN_DIR --resume [--stage NAME], not a checkpoint path")
    if request.resume and request.out is None:
        raise UserError("--resume of a staged run needs --out RUN_DIR")
    out = Path(request.out) if request.out is not None else default_run_dir(request.model)
    cfg = _pipeline_config(request, fresh, out)
    if request.data is not None:
        cfg["data"]["source"] = request.data
    names = config_module.stage_names(cfg)
    if request.stage is not None and request.stage not in names:
        raise UserError(f"--stage {request.stage}: family '{request.model}' has the stages {names}")
    selected = names if request.stage is None else [request.stage]
    if request.summary:
        print("\n".join(f"stage {name}\n{_summary(request.model, config_module.stage_config(cfg, name), request.device)}"
                        for name in names))
        return None
    out.mkdir(parents=True, exist_ok=True)
    if not (out / STAGES_RECORD).is_file() or not request.resume:
        with atomic_write(out / STAGES_RECORD, "w") as handle:
            yaml.safe_dump(cfg, handle, sort_keys=False)
    result = None
    for name in selected:
        stage_dir = out / "stages" / name
        latest = stage_dir / "checkpoints" / "latest.pt"
        resume = read_checkpoint(latest) if request.resume and latest.is_file() else None
        stage_cfg = config_module.stage_config(cfg, name)
        if resume is not None:
            ckpt.check_compatible(resume, request.model, stage_cfg, latest)
        result = train_one(request, stage_cfg, stage_dir, resume, _earlier_stages(request, out, names, name), out)
    _write_stages_checkpoint(request.model, cfg, out, names)
    return result


def _write_stages_checkpoint(model: str, cfg: dict, out: Path, names: list[str]) -> Path | None:
    """``<out>/checkpoints/best.pt`` of every stage, once each has a checkpoint (else None)."""
    paths = {name: stage_checkpoint(out, name) for name in names}
    if any(path is None for path in paths.values()):
        return None
    stages = {name: read_checkpoint(path) for name, path in paths.items()}
    return ckpt.save_checkpoint(out / "checkpoints" / "best.pt", ckpt.stages_checkpoint(model, cfg, stages))
