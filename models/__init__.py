"""Model families and their registry.

Each family lives in ``models/<family>/`` and is registered here by one line: its name and
the import path of its :class:`models.base.Family` subclass.
"""

from __future__ import annotations

import difflib
import importlib

from misc.errors import UserError
from models.base import Family

FAMILIES: dict[str, str] = {
    "hovernet": "models.hovernet.family:HoVerNetFamily",
}


def register_family(name: str, target: str | type[Family]) -> None:
    """Register a family by import path ``'package.module:Class'`` or by class."""
    FAMILIES[name] = target  # type: ignore[assignment]


def get_family(name: str) -> type[Family]:
    """The family class registered under ``name``.

    Raises:
        UserError: the name is unknown (the message names the closest valid one).
    """
    if name not in FAMILIES:
        close = difflib.get_close_matches(name, list(FAMILIES), n=1, cutoff=0.0)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown model family '{name}' (have {sorted(FAMILIES)}){hint}")
    target = FAMILIES[name]
    if isinstance(target, str):
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)
    return target
