"""Data loading: dataset readers, patch extraction, augmentation and training datasets.

Public entry points are imported lazily so that ``import loader`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "read_dataset": "loader.readers",
    "reassemble": "loader.extract",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'loader' has no attribute '{name}'")


__all__ = sorted(_EXPORTS)
