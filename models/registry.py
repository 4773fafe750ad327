"""The registry of model families.

Each family lives in ``models/<family>/`` and is registered here by one line: its name and
the import path of its :class:`models.base.Family` subclass. Families outside the package
(experiments, tests) register themselves from a plugin module: ``train.py --plugin
my.module`` or ``HISTOSEG_PLUGINS=my.module,other.module`` imports the module, which calls
:func:`register_family`.
"""

from __future__ import annotations

import difflib
import importlib
import os
from pathlib import Path

from misc.errors import UserError
from models.base import Family

FAMILIES: dict[str, str] = {
    "hovernet": "models.hovernet.family:HoVerNetFamily",
    "fullnet": "models.fullnet.family:FullNetFamily",
    "histosegnet": "models.histosegnet.family:HistoSegNetFamily",
    "h2gnet": "models.h2gnet.family:H2GNetFamily",
    "chrnet": "models.chrnet.family:CHRNetFamily",
    "unet": "models.unet.family:UNetFamily",
}
PLUGINS_ENV = "HISTOSEG_PLUGINS"


def register_family(name: str, target: str | type[Family]) -> None:
    """Register a family by import path ``'package.module:Class'`` or by class."""
    FAMILIES[name] = target  # type: ignore[assignment]


def load_plugins(modules: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Import plugin modules that register families: ``modules`` plus ``$HISTOSEG_PLUGINS``.

    ``$HISTOSEG_PLUGINS`` is a comma-separated list of module names.

    Returns:
        The module names imported, in order.

    Raises:
        UserError: a module cannot be imported (names it and the import error).
    """
    env = [name.strip() for name in os.environ.get(PLUGINS_ENV, "").split(",") if name.strip()]
    names = list(dict.fromkeys([*env, *modules]))
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise UserError(f"plugin '{name}' cannot be imported ({err}); pass an importable module name") from None
    return names


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


def defaults_path(name: str) -> Path | None:
    """The family's defaults YAML when it keeps one outside ``opt/`` (see ``Family.default_config_path``)."""
    path = get_family(name).default_config_path()
    return Path(path) if path is not None else None
