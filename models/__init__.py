"""Model families: the registry (:mod:`models.registry`, re-exported here) and checkpoint loading."""

from __future__ import annotations

import os
from torch import nn

from models.base import Family
from models.checkpoint import load_checkpoint
from models.registry import FAMILIES, PLUGINS_ENV, defaults_path, get_family, load_plugins, register_family

__all__ = [
    "FAMILIES", "PLUGINS_ENV", "Family", "defaults_path", "get_family", "load_model", "load_plugins",
    "register_family",
]


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
