"""Reading checkpoints back into a family: ours (written by ``train.py``, see
:mod:`engine.checkpoint` for the layout) and those a family's authors released.

Checkpoints are plain dicts read with ``torch.load(path, weights_only=True)``; the keys every
one of ours holds are :data:`CHECKPOINT_KEYS`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from config import load_config
from misc.errors import UserError
from models.base import Family
from models.registry import FAMILIES, defaults_path, get_family, load_plugins

CHECKPOINT_KEYS = ("model", "family", "config")
# Keys of the ``model`` config section that do not change the network's layout.
NON_ARCHITECTURE_KEYS = ("pretrained", "zero_init_hv")


def _torch_load(path: Path, device: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with any failure turned into one clear error."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - every decoder failure is the file's fault
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__}: {first})") from None


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises:
        UserError: the file is missing, unreadable, or not a training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    checkpoint = _torch_load(path, device)
    if not _is_ours(checkpoint):
        raise UserError(f"{path}: not a histoseg training checkpoint (expected keys {list(CHECKPOINT_KEYS)})")
    return checkpoint


def is_training_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a checkpoint written by this engine (cheap key check)."""
    try:
        checkpoint = _torch_load(Path(path))
    except UserError:
        return False
    return _is_ours(checkpoint)


def _is_ours(checkpoint: Any) -> bool:
    return isinstance(checkpoint, dict) and all(key in checkpoint for key in CHECKPOINT_KEYS)


def architecture(model_cfg: dict) -> dict:
    """The ``model`` config keys that determine the network layout."""
    return {key: value for key, value in (model_cfg or {}).items() if key not in NON_ARCHITECTURE_KEYS}


def load_state(net: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Load a state dict strictly; a layout mismatch is a :class:`UserError` naming a key."""
    own = net.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    if missing or unexpected:
        raise UserError(
            f"{source}: weights do not match the network "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise UserError(
                f"{source}: weight '{key}' has shape {tuple(value.shape)}, the network expects {tuple(own[key].shape)}"
            )
    net.load_state_dict(state)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Family, nn.Module, dict]:
    """Rebuild a trained network from one of our checkpoints.

    Args:
        path: a ``latest.pt``/``best.pt`` written by ``train.py``, or a checkpoint released
            by a family's original authors (e.g. the official HoVer-Net ``.tar`` files), which
            the family recognises through :meth:`models.base.Family.adopt_checkpoint`.
        device: where the network goes.

    Returns:
        ``(family, net, meta)``: the :class:`models.base.Family` instance built from the stored
        config (with ``norm_stats`` restored), the network in eval mode on ``device``, and the
        checkpoint without its optimiser/scheduler/RNG entries (``config``, ``family``, ``epoch``,
        ``step``, ``phase``, ``norm_stats``, ``best_metric``). A staged checkpoint gives its last
        stage and ``meta['stage_models']``: call ``inference.predict.chain_stages`` before predicting.

    Families registered by plugins are found when ``$HISTOSEG_PLUGINS`` names their module.

    Raises:
        UserError: unreadable file, unknown family, or weights that do not fit the network.
    """
    load_plugins()  # families registered by $HISTOSEG_PLUGINS modules
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    checkpoint = _torch_load(path)
    if not _is_ours(checkpoint):
        checkpoint = adopt_published(checkpoint, path)
    if "stages" in checkpoint:
        return _load_stages(checkpoint, path, device)
    family, net = _rebuild(checkpoint, path, device)
    meta = {key: value for key, value in checkpoint.items() if key not in ("model", "optimizer", "scheduler", "scaler", "rng")}
    return family, net, meta


def _rebuild(checkpoint: dict, path: Path, device: str | torch.device) -> tuple[Family, nn.Module]:
    """The family (``norm_stats`` and ``extra_state`` restored) and eval-mode network of one entry."""
    cfg = copy.deepcopy(checkpoint["config"])
    if isinstance(cfg.get("model"), dict) and "pretrained" in cfg["model"]:
        cfg["model"]["pretrained"] = None  # the trained weights replace any initialisation
    family = get_family(checkpoint["family"])(cfg)
    family.norm_stats = checkpoint.get("norm_stats")
    family.extra_state = dict(checkpoint.get("family_state") or {})
    net = family.build_network()
    load_state(net, checkpoint["model"], path)
    net.to(device).eval()
    return family, net


def _load_stages(checkpoint: dict, path: Path, device: str | torch.device) -> tuple[Family, nn.Module, dict]:
    """A staged checkpoint (``engine.checkpoint.stages_checkpoint``): the last stage's family
    and network; ``meta['stage_models']`` lists ``(family, net)`` of every stage in order, which
    ``inference.predict.chain_stages`` wires so that the last stage sees the earlier ones' maps."""
    stages = [_rebuild({**entry, "family": checkpoint["family"]}, path, device) for entry in checkpoint["stages"].values()]
    family, net = stages[-1]
    meta = {"config": checkpoint["config"], "family": checkpoint["family"], "stages": list(checkpoint["stages"]),
            "stage_models": stages}
    return family, net, meta


def adopt_published(checkpoint: Any, path: Path) -> dict:
    """Turn a checkpoint released by a family's authors into the layout of ours.

    Every registered family is asked through :meth:`models.base.Family.adopt_checkpoint`;
    the first that recognises the file supplies its config overrides and state dict.

    Raises:
        UserError: no registered family recognises the file.
    """
    for name in list(FAMILIES):
        adopted = get_family(name).adopt_checkpoint(checkpoint, str(path))
        if adopted is None:
            continue
        overrides, state = adopted
        cfg = load_config(name, overrides=overrides, defaults_path=defaults_path(name))
        return {"model": state, "family": name, "config": cfg, "norm_stats": None, "epoch": None, "step": None}
    raise UserError(
        f"{path}: neither a histoseg training checkpoint (keys {list(CHECKPOINT_KEYS)}) nor a released "
        f"checkpoint of a registered family ({sorted(FAMILIES)})"
    )
