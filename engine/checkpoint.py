"""Saving training state: atomic checkpoint writes, RNG state capture and restore, and the
check that a ``--resume`` checkpoint fits the run. :mod:`models.checkpoint` reads them back.

A checkpoint is a plain dict that ``torch.load(path, weights_only=True)`` can read::

    model        state dict of the network (no DistributedDataParallel prefix)
    optimizer    optimiser state dict of the current phase
    scheduler    learning-rate scheduler state dict of the current phase
    scaler       AMP gradient-scaler state dict, or None
    epoch        epochs completed over all phases (int)
    step         optimiser steps completed over all phases (int)
    phase        index of the phase the last completed epoch belongs to (int)
    rng          {'python', 'numpy', 'torch', 'cuda'} random states as tensors/lists
    config       the resolved configuration (plain dicts/lists/scalars)
    family       the family's registry name (str)
    norm_stats   {'mean': [...], 'std': [...]} per channel, or None
    family_state the family's fitted state (``Family.extra_state``: JSON values), {} when none
    best_metric  best validation score so far (float or None)
    planned_epochs  epochs a time-budgeted run (train.time_budget_s) plans, or None
    train_seconds   wall seconds of the completed epochs, over resumes (float)
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from misc.errors import UserError
from misc.io import atomic_write
from models.checkpoint import architecture


def rng_state() -> dict:
    """Every random state the training loop draws from, as tensors/lists/scalars.

    Returns:
        ``{'python': {'version', 'state', 'gauss'}, 'numpy': {'keys', 'pos', 'has_gauss',
        'cached_gaussian'}, 'torch': uint8 tensor, 'cuda': list of uint8 tensors}``.
    """
    version, state, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": list(state), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore the states captured by :func:`rng_state`."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(
        ("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, checkpoint: dict) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (a crash never leaves a partial file)."""
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        torch.save(checkpoint, handle)
    return path


def check_compatible(checkpoint: dict, family: str, cfg: dict, path: str | os.PathLike) -> None:
    """Refuse to resume from a checkpoint of another family or another model layout.

    Raises:
        UserError: naming the checkpoint, the differing family or ``model.*`` keys.
    """
    if checkpoint["family"] != family:
        raise UserError(
            f"{path}: checkpoint of family '{checkpoint['family']}', but --model is '{family}'; "
            f"pass --model {checkpoint['family']} or another checkpoint"
        )
    saved = architecture(checkpoint["config"].get("model", {}))
    wanted = architecture(cfg.get("model", {}))
    differing = sorted(key for key in set(saved) | set(wanted) if saved.get(key) != wanted.get(key))
    if differing:
        details = ", ".join(f"model.{key}={saved.get(key)!r} (this run: {wanted.get(key)!r})" for key in differing)
        raise UserError(f"{path}: checkpoint was trained with {details}; resume with the same model settings")


def stages_checkpoint(family: str, config: dict, stages: dict[str, dict]) -> dict:
    """One checkpoint holding every stage of a staged family::

        family   the family's registry name
        config   the whole resolved config (with its ``stages`` section)
        model    {} (the weights are the stages')
        stages   {stage name: {model, config (the stage's), norm_stats, family_state, epoch,
                 step, best_metric}} in stage order

    ``models.checkpoint.load_checkpoint`` reads it (the last stage, the others in its meta).

    Args:
        stages: stage name → that stage's training checkpoint (optimiser entries are dropped).
    """
    keep = ("model", "config", "norm_stats", "family_state", "epoch", "step", "best_metric")
    return {"family": family, "config": config, "model": {},
            "stages": {name: {key: entry.get(key) for key in keep} for name, entry in stages.items()}}
