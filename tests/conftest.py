"""Shared test fixtures: the real-data root and small thread counts for 2-core CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path | None:
    """``$HISTOSEG_DATA`` or ``../shared/data`` beside the checkout, when it exists."""
    env = os.environ.get("HISTOSEG_DATA")
    candidate = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Root of the real shared datasets; skips the test when it is absent."""
    root = shared_data_root()
    if root is None:
        pytest.skip("real data not found: set HISTOSEG_DATA or place ../shared/data beside the checkout")
    return root


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    """Keep torch to one thread per process so parallel tests do not oversubscribe 2 cores."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``cuda`` when torch sees no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run `python -m pytest -m cuda` on a GPU host)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def strict_float32():
    """Turn TF32 off for CUDA matrix products and convolutions during the test (exact float32)."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
