"""Model families: the registry (:mod:`models.registry`), notebook entry points and checkpoint loading.

In a notebook::

    import models
    family = models.create_family("hovernet", profile="cpu", overrides=["infer.tta=false"])
    net = family.build_network()
    net = models.load_model("runs/hovernet/checkpoints/best.pt")
"""

from __future__ import annotations

import os
from typing import Iterable

from torch import nn

from config import load_config
from models.base import Family
from models.checkpoint import load_checkpoint
from models.registry import FAMILIES, PLUGINS_ENV, defaults_path, get_family, load_plugins, register_family

__all__ = [
    "FAMILIES", "PLUGINS_ENV", "Family", "create_family", "defaults_path", "get_family", "load_model", "load_plugins",
    "register_family",
]


def create_family(name: str, profile: str | None = None, overrides: Iterable[str] = ()) -> Family:
    """A configured family, as ``train.py --model NAME --profile PROFILE --set ...`` builds it.

    Args:
        name: a registered family (``hovernet``, ``fullnet``, or one registered by a plugin).
        profile: a profile of the family's YAML (``opt/<name>.yaml``); None: the default profile (``paper``).
        overrides: ``KEY=VALUE`` strings as ``--set`` takes them, e.g. ``"infer.tta=false"``.

    Returns:
        The family instance with its resolved ``cfg``; ``build_network()`` gives an untrained
        network, ``norm_stats`` is None until fitted or read from a checkpoint.

    Raises:
        UserError: unknown family or profile, or a bad override.
    """
    family_cls = get_family(name)
    return family_cls(load_config(name, profile, overrides=list(overrides), defaults_path=defaults_path(name)))


def load_model(path: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """A trained network in eval mode, from one of our checkpoints or an official HoVer-Net file.

    Args:
        path: ``checkpoints/best.pt``/``latest.pt`` written by ``train.py``, or a published
            HoVer-Net ``.tar``/``.pth`` checkpoint.
        device: where the network goes.

    Raises:
        UserError: the file is neither kind.
    """
    return load_checkpoint(path, device)[1]
