"""Optimisers and learning-rate schedules of the training phases."""

from __future__ import annotations

import math
from typing import Callable

import torch

from misc.errors import UserError

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


SCHEDULES = ("constant", "step", "multistep", "cosine", "poly", "cyclic")


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
