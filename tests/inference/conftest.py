"""Every test here runs with the toy family registered (see tests/inference/toy_family.py)."""

from __future__ import annotations

import pytest

from tests.inference.toy_family import toy_registered  # noqa: F401  (fixture)


@pytest.fixture(autouse=True)
def _toy(toy_registered: None) -> None:  # noqa: F811
    """Apply ``toy_registered`` to every test of this folder."""
