"""Fixtures of the engine tests."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.engine.helpers import run_train


@pytest.fixture
def train():
    """``run_train`` that fails the test with the child's stderr when it exits non-zero."""

    def _train(*args: str | os.PathLike, **kwargs) -> subprocess.CompletedProcess:
        done = run_train(*args, **kwargs)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    return _train
