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
import csv
import functools
import io
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

import config as config_module
from misc import checkpoint as ckpt
from misc.distributed import DistInfo, barrier, mean_across
from misc.errors import UserError
from misc.precision import autocast_dtype, channels_last_allowed
from models.base import Family

log = logging.getLogger(__name__)

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}
SCHEDULES = ("constant", "step", "multistep", "cosine", "poly", "cyclic")
OVERLAY_IMAGES = 3


class NonFiniteLoss(UserError):
    """Training stopped on a NaN/inf loss; the message names the step and the loss term."""


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


#: ``data.synthetic.kind``: nucleus tiles (instance and type maps) or tissue tiles (tissue-type
#: map and patch labels, :mod:`loader.synthetic_tissue`).
SYNTHETIC_KINDS = ("nuclei", "tissue")


def _synthetic_arrays(seed: int, size: int, kind: str = "nuclei") -> Any:
    """Arrays of one synthetic tile (module-level so DataLoader workers can pickle it)."""
    from loader.readers.core import Arrays

    if kind == "tissue":
        from loader.synthetic_tissue import generate_tissue_tile

        tile = generate_tissue_tile(seed, (size, size))
        return Arrays(image=tile.image, type_map=tile.tissue_map, labels=tile.labels)
    from misc.synthetic import generate_tile

    image, inst_map, type_map = generate_tile(seed, (size, size))
    return Arrays(image=image, inst_map=inst_map, type_map=type_map)


def _unchanged(arrays: Any, record: Any) -> Any:
    """Identity sample transform."""
    return arrays


def synthetic_dataset(n: int, seed: int, size: int, offset: int = 0, kind: str = "nuclei") -> Any:
    """``n`` lazy synthetic tiles ``tile_seed(seed, offset + i)`` of ``kind`` (see
    :data:`SYNTHETIC_KINDS`) as a ``loader`` Dataset."""
    from loader.readers.core import Dataset, Record
    from loader.synthetic_tissue import PATCH_CLASSES
    from misc.synthetic import NUCLEUS_TYPES, tile_seed

    if kind not in SYNTHETIC_KINDS:
        raise UserError(f"data.synthetic.kind '{kind}' is not one of {list(SYNTHETIC_KINDS)}")
    class_names = PATCH_CLASSES if kind == "tissue" else tuple(name for name, _ in NUCLEUS_TYPES.values())
    records = [
        Record(
            name=f"synthetic_{offset + i:04d}",
            source=Path("synthetic"),
            loader=functools.partial(_synthetic_arrays, tile_seed(seed, offset + i), size, kind),
            class_names=class_names,
        )
        for i in range(n)
    ]
    return Dataset("synthetic", Path("synthetic"), records, _unchanged)


def read_source(source: str, split: str | None = None) -> Any:
    """Samples of a data source other than ``synthetic``.

    Args:
        source: ``KIND:ROOT`` (a ``loader.read_dataset`` kind and its folder) or a patch
            folder/``.h5`` written by ``extract_patches.py``.
        split: split name or split file for ``KIND:ROOT`` sources; the group of an
            extract folder holding several.

    Raises:
        UserError: the source is neither form, or the reader refuses it.
    """
    if Path(source).exists():
        from loader.datasets import open_patches

        return open_patches(source, split)
    if ":" not in source:
        raise UserError(
            f"--data '{source}': expected 'synthetic', KIND:ROOT (e.g. consep_mat:/data/consep) "
            "or an existing patch folder/.h5 from extract_patches.py"
        )
    import loader

    kind, root = source.split(":", 1)
    return loader.read_dataset(kind, root, split=split)


def _field(item: Any, key: str) -> Any:
    """``item[key]`` of a dict, else the attribute ``key`` (None when absent)."""
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)


def _groups(dataset: Any) -> list[str]:
    """Source-image group of every sample: its ``group``, else its ``source`` image (patches),
    else its name. Reads records, not pixels, when the dataset keeps them."""
    if hasattr(dataset, "groups"):
        return [str(group) for group in dataset.groups]
    items = dataset.records if hasattr(dataset, "records") else dataset
    return [
        str(_field(item, "group") or _field(item, "source") or _field(item, "name") or index)
        for index, item in enumerate(items)
    ]


def split_by_group(dataset: Any, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val) holding out ``fraction`` of the source-image groups.

    Patches of one source image never straddle the split. The held-out groups are a
    seeded random choice of ``round(fraction * n_groups)`` (at least one when ``fraction > 0``
    and there are two or more groups).
    """
    groups = _groups(dataset)
    unique = sorted(set(groups))
    n_val = min(len(unique) - 1, max(1, round(fraction * len(unique)))) if fraction > 0 else 0
    rng = np.random.default_rng(seed)
    held_out = set(rng.permutation(unique)[:n_val].tolist()) if n_val > 0 else set()
    train = [i for i, group in enumerate(groups) if group not in held_out]
    val = [i for i, group in enumerate(groups) if group in held_out]
    return train, val


class Subset(Sequence):
    """The items of ``base`` at ``indices`` (picklable for DataLoader workers)."""

    def __init__(self, base: Any, indices: Sequence[int]) -> None:
        self.base = base
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.base[self.indices[index]]


def build_splits(data_cfg: dict, seed: int) -> tuple[Any, Any]:
    """Training and validation samples for the ``data`` config section.

    Raises:
        UserError: the training set is empty.
    """
    source = str(data_cfg["source"])
    if source == "synthetic":
        syn = data_cfg["synthetic"]
        kind = str(syn.get("kind", "nuclei"))
        train = synthetic_dataset(int(syn["n_train"]), int(syn["seed"]), int(syn["size"]), kind=kind)
        val = synthetic_dataset(int(syn["n_val"]), int(syn["seed"]), int(syn["size"]), offset=int(syn["n_train"]), kind=kind)
    elif data_cfg.get("val_source"):
        train = read_source(source, data_cfg.get("split"))
        val = read_source(str(data_cfg["val_source"]))
    else:
        full = read_source(source, data_cfg.get("split"))
        train_idx, val_idx = split_by_group(full, float(data_cfg.get("val_fraction") or 0.0), seed)
        train, val = Subset(full, train_idx), Subset(full, val_idx)
    if len(train) == 0:
        raise UserError(f"data source '{source}': no training samples (check the path, split and data.val_fraction)")
    return train, val


def sample_dict(sample: Any) -> dict[str, Any]:
    """A sample's arrays as a dict: ``image`` (H, W, 3) uint8 and, when present, ``inst_map``,
    ``type_map`` (H, W) int32 and ``labels`` (C,) int; plus ``name``."""
    out: dict[str, Any] = {"name": _field(sample, "name") or ""}
    for key in ("image", "inst_map", "type_map", "labels"):
        value = _field(sample, key)
        if value is not None:
            out[key] = value
    return out


def build_train_dataset(family: Family, samples: Any, cfg: dict, cache_dir: Path | None = None) -> Any:
    """The training dataset: a random ``data.patch_size`` crop of each sample, then the
    ``data.augment`` pipeline (preset name or op list), then the family's target builder.

    A target builder with a ``cache_key`` (expensive per-sample maps such as weight maps)
    gets its pre-augmentation maps cached under ``cache_dir``."""
    from loader.augment import build_augment, load_augment_preset
    from loader.datasets import SampleDataset

    spec = cfg["data"].get("augment")
    ops = list(load_augment_preset(spec) if isinstance(spec, str) else spec or [])
    patch = cfg["data"].get("patch_size")
    if patch:
        ops.insert(0, {"op": "crop", "size": [int(patch), int(patch)], "position": "random"})
    size = int(cfg["infer"]["input_size"])
    builder = family.target_builder()
    cached = cache_dir is not None and getattr(builder, "cache_key", None) is not None
    return SampleDataset(
        samples,
        augment=build_augment(ops, input_shape=(size, size)) if ops else None,
        target_builder=builder,
        seed=int(cfg["train"]["seed"]),
        cache_dir=cache_dir if cached else None,
    )


def build_loader(dataset: Any, batch_size: int, info: DistInfo, seed: int, num_workers: int, device: torch.device) -> DataLoader:
    """A DataLoader over this process's shard; call ``loader.sampler.set_epoch`` every epoch.

    The order depends only on (seed, epoch); ``batch_size`` is per process.
    """
    from loader.datasets import seed_worker

    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        drop_last=False,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=seed_worker,
    )


# --------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------


def build_optimizer(groups: list[dict], spec: dict, phase_name: str) -> torch.optim.Optimizer:
    """An optimiser from ``{name: adam|adamw|sgd|rmsprop, lr: ..., **torch kwargs}``.

    Raises:
        UserError: unknown name or keyword, naming the phase.
    """
    options = dict(spec)
    name = str(options.pop("name", "adam")).lower()
    if name not in OPTIMIZERS:
        raise UserError(f"train.phases '{phase_name}': optimizer.name '{name}' is not one of {sorted(OPTIMIZERS)}")
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    if not any(group["params"] for group in groups):
        raise UserError(f"train.phases '{phase_name}': its freeze list leaves no parameter to train")
    try:
        return OPTIMIZERS[name](groups, **options)
    except TypeError as err:
        raise UserError(f"train.phases '{phase_name}': optimizer {name}: {err}") from None


def cyclic_factor(spec: dict, position: float) -> float:
    """Triangular cyclical learning rate (Smith, WACV 2017) with step decay, at ``position``
    epochs (fractional) into the phase: from 1 up to ``max_factor`` and back once every
    ``cycle_epochs``, the whole curve multiplied by ``gamma`` every ``step_size`` epochs."""
    cycle = float(spec["cycle_epochs"])
    if cycle <= 0 or float(spec["max_factor"]) < 1:
        raise UserError(f"train.phases: schedule 'cyclic' needs cycle_epochs > 0 and max_factor >= 1 (got {spec})")
    triangle = 1.0 - abs(2.0 * ((position / cycle) % 1.0) - 1.0)
    decay = float(spec.get("gamma", 0.5)) ** math.floor(position / float(spec.get("step_size", math.inf)))
    return (1.0 + (float(spec["max_factor"]) - 1.0) * triangle) * decay


def schedule_factor(spec: dict | None, epoch: float, epochs: int) -> float:
    """Learning-rate multiplier of a phase's schedule at ``epoch`` (0-based, within the phase;
    fractional for ``cyclic``, whole epochs for the others).

    ``constant``; ``step`` {step_size, gamma}; ``multistep`` {milestones, gamma};
    ``cosine`` {min_factor} from 1 to min_factor over the phase; ``poly`` {power} to 0;
    ``cyclic`` {max_factor, cycle_epochs, step_size, gamma} (see :func:`cyclic_factor`).
    """
    spec = spec or {"name": "constant"}
    name = spec.get("name", "constant")
    needed = {"step": "step_size", "multistep": "milestones", "cyclic": "cycle_epochs"}.get(name)
    if needed is not None and needed not in spec:
        raise UserError(f"train.phases: schedule '{name}' needs '{needed}' (got {spec})")
    if name == "cyclic":
        return cyclic_factor({"max_factor": 1.0, **spec}, float(epoch))
    epoch = int(epoch)
    if name == "constant":
        return 1.0
    if name == "step":
        return float(spec.get("gamma", 0.1)) ** (epoch // int(spec["step_size"]))
    if name == "multistep":
        return float(spec.get("gamma", 0.1)) ** sum(epoch >= m for m in spec["milestones"])
    if name == "cosine":
        low = float(spec.get("min_factor", 0.0))
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))
    if name == "poly":
        return (1 - epoch / max(1, epochs)) ** float(spec.get("power", 0.9))
    raise UserError(f"train.phases: schedule.name '{name}' is not one of {list(SCHEDULES)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, phase: dict, steps_per_epoch: int, warmup_steps: int,
    horizon: Callable[[], int] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-optimiser-step learning rate: linear warm-up over the phase's first
    ``warmup_steps`` steps times the phase schedule of the current epoch, over the phase's
    ``epochs`` or, when given, the epochs ``horizon()`` returns at each step (a time-budgeted run)."""
    schedule = phase.get("schedule")
    schedule_factor(schedule, 0, int(phase["epochs"]))  # reject an unknown schedule before training starts

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
        epochs = horizon() if horizon is not None else int(phase["epochs"])
        position = step / steps_per_epoch if (schedule or {}).get("name") == "cyclic" else step // steps_per_epoch
        return warm * schedule_factor(schedule, position, epochs)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------
# Device placement and validation
# --------------------------------------------------------------------------------------------


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


def validate(
    family: Family, net: nn.Module, samples: Any, cfg: dict, device: torch.device, amp_dtype: torch.dtype | None,
) -> tuple[dict[str, float], list[np.ndarray]]:
    """Score whole validation images with the tiled inference and post-processing of
    ``infer.py``/``process.py`` (``misc.inference.infer_image``, ``family.postprocess`` at
    ``infer.mag``), then ``family.evaluate``.

    Returns:
        The mean of every score over images (NaN scores skipped) and up to
        :data:`OVERLAY_IMAGES` (H, W, 3) uint8 overlays for TensorBoard.
    """
    from metrics import mean_rows
    from misc.inference import infer_image

    rows: list[dict[str, float]] = []
    overlays: list[np.ndarray] = []
    for sample in samples:
        truth = sample_dict(sample)
        raw = infer_image(family, net, truth["image"], device, amp_dtype=amp_dtype)
        result = family.postprocess(raw, mag=cfg["infer"].get("mag"))
        rows.append(family.evaluate(result, truth))
        if len(overlays) < OVERLAY_IMAGES:
            picture = family.overlay(truth["image"], result)
            if picture is not None:
                overlays.append(picture)
    return {key: entry["mean"] for key, entry in mean_rows(rows).items()}, overlays


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def network_summary(net: nn.Module, example: torch.Tensor) -> str:
    """A layer table of ``net`` on ``example``: leaf modules, output shapes, parameter counts.

    Ends with the line ``params: N`` (all parameters of the network).
    """
    rows: list[tuple[str, str, str, int]] = []
    hooks = []

    def shape_of(output: Any) -> str:
        if isinstance(output, torch.Tensor):
            return str(tuple(output.shape))
        if isinstance(output, dict):
            return ", ".join(f"{k}: {shape_of(v)}" for k, v in output.items())
        if isinstance(output, (list, tuple)):
            return ", ".join(shape_of(v) for v in output)
        return type(output).__name__

    def hook(name: str, module: nn.Module, _inputs: Any, output: Any) -> None:
        params = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append((name, type(module).__name__, shape_of(output), params))

    for name, module in net.named_modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(functools.partial(hook, name)))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            output = net(example)
    finally:
        for handle in hooks:
            handle.remove()
        net.train(was_training)
    width = max([len(r[0]) for r in rows] + [5])
    lines = [f"{'layer':<{width}}  {'type':<20}  {'params':>10}  output"]
    lines += [f"{name:<{width}}  {kind:<20}  {params:>10,}  {shape}" for name, kind, shape, params in rows]
    lines.append(f"input: {tuple(example.shape)}  output: {shape_of(output)}")
    lines.append(f"params: {sum(p.numel() for p in net.parameters())}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Run bookkeeping
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class MetricsTable:
    """``metrics.csv``: one row per epoch, rewritten atomically; columns grow as keys appear."""

    def __init__(self, path: Path, keep_until_epoch: int | None = None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if keep_until_epoch is not None and path.is_file():
            with open(path, newline="", encoding="utf-8") as handle:
                self.rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) <= keep_until_epoch]

    def append(self, row: dict[str, Any]) -> None:
        """Add a row and rewrite the file."""
        from misc.io import atomic_write

        self.rows.append(row)
        columns = list(dict.fromkeys(key for r in self.rows for key in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        with atomic_write(self.path, "w") as handle:
            handle.write(buffer.getvalue())


def _tensorboard(run_dir: Path, purge_step: int | None) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tb"), purge_step=purge_step)


def _progress(iterable: Any, total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


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


def batch_to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    out = {}
    for key, value in batch.items():
        if key == "image":
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
    loader = build_loader(setup.train_set, int(phase["batch_size"]), info, seed, int(cfg["data"].get("num_workers", 0)), device)
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
    """The checkpoint dict of the run after ``loop.epoch`` epochs (see :mod:`misc.checkpoint`)."""
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
        resume: a checkpoint dict from :func:`misc.checkpoint.read_checkpoint`, already
            checked with :func:`misc.checkpoint.check_compatible`; its weights are loaded here.

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
    select = str(train_cfg.get("select_metric", "pq"))
    val_every = max(1, int(train_cfg.get("val_every", 1)))

    loop = Loop()
    if resume is not None:
        ckpt.load_state(net, resume["model"], "--resume checkpoint")
        loop = Loop(epoch=int(resume["epoch"]), step=int(resume["step"]), best_metric=resume.get("best_metric"),
                    seconds=float(resume.get("train_seconds") or 0.0))
    if budget_s is not None:
        most = int(phases[0]["epochs"])
        planned = resume.get("planned_epochs") if resume is not None else None
        loop.planned_epochs = min(most, max(loop.epoch, 1, int(planned or most)))
    recorder = None
    if info.is_main:
        writer = _tensorboard(setup.run_dir, loop.step if resume is not None else None)
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
                scores, overlays = validate(setup.family, net, setup.val_samples, cfg, setup.device, options.amp_dtype)
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


def _optimizer_step(state: PhaseState, params: list[nn.Parameter], clip_grad_norm: float | None) -> float:
    """Unscale (AMP fp16), clip, step, zero the gradients and advance the schedule.

    Returns:
        The learning rate this step used.
    """
    if state.scaler is not None:
        state.scaler.unscale_(state.optimizer)
    if clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, float(clip_grad_norm))
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    lr = state.optimizer.param_groups[0]["lr"]
    state.scheduler.step()
    return lr


def _train_epoch(setup: Setup, state: PhaseState, loop: Loop, options: StepOptions, writer: Any) -> dict[str, float]:
    """One pass over this process's shard.

    Returns:
        The mean loss and terms over its micro-batches, and ``lr``: the learning rate of the
        epoch's last optimiser step.
    """
    family, device, info = setup.family, setup.device, setup.info
    model, loader, optimizer, scaler = state.model, state.loader, state.optimizer, state.scaler
    loader.sampler.set_epoch(loop.epoch)
    if hasattr(setup.train_set, "set_epoch"):
        setup.train_set.set_epoch(loop.epoch)
    loader.generator.manual_seed(int(setup.cfg["train"]["seed"]) * 100_003 + loop.epoch)
    family.train_mode(setup.net, state.config)
    sums: dict[str, float] = {}
    count = 0
    n_batches = len(loader)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    lr = optimizer.param_groups[0]["lr"]
    optimizer.zero_grad(set_to_none=True)
    accumulate = options.accumulate
    total = run_epochs(setup.cfg["train"]["phases"], loop)
    bar = _progress(loader, n_batches, f"epoch {loop.epoch + 1}/{total}", info.is_main and not setup.quiet)
    for index, batch in enumerate(bar):
        batch = batch_to_device(batch, device, options.channels_last)
        last_micro = (index + 1) % accumulate == 0 or index + 1 == n_batches
        sync = contextlib.nullcontext() if last_micro or not info.distributed else model.no_sync()
        with sync:
            with autocast_context(device, options.amp_dtype):
                outputs = family.forward(model, batch)
                loss, terms = family.loss(outputs, batch, state.weights)
            names = ["loss", *terms]
            values = mean_across(torch.stack([loss.detach().float(), *(t.detach().float() for t in terms.values())]), info)
            _check_finite(values.cpu(), names, loop.epoch, loop.step, state.name)
            scaled = loss / accumulate
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        for name, value in zip(names, values.tolist()):
            sums[name] = sums.get(name, 0.0) + value
        count += 1
        if not last_micro:
            continue
        lr = _optimizer_step(state, params, options.clip_grad_norm)
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


# --------------------------------------------------------------------------------------------
# A whole run, as train.py asks for it
# --------------------------------------------------------------------------------------------


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


class ImageView(Sequence):
    """The ``image`` of each sample, read on access ((H, W, 3) uint8)."""

    def __init__(self, samples: Any) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> np.ndarray:
        return sample_dict(self.samples[index])["image"]


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


def run(request: RunRequest) -> TrainResult | None:
    """Resolve the config, build family, network and data, and train (or print ``--summary``).

    Returns:
        The :class:`TrainResult`, or None for ``--summary``.

    Raises:
        UserError: unknown family/profile/data kind, bad config, incompatible or unreadable
            ``--resume`` checkpoint, empty dataset, NaN/inf loss.
    """
    from misc import distributed
    from models import defaults_path, get_family, load_plugins

    load_plugins(request.plugins)
    family_cls = get_family(request.model)
    checkpoint_path = resume_path(request)
    resume = ckpt.read_checkpoint(checkpoint_path) if checkpoint_path is not None else None
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
