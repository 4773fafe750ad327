"""Shared helpers of the H2G-Net tests: the published MobileNetV2 state-dict fixture."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]


def fixtures_dir() -> Path:
    """``$HISTOSEG_FIXTURES`` or ``../shared/fixtures`` beside the checkout."""
    env = os.environ.get("HISTOSEG_FIXTURES")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def mobilenet_fixture() -> dict:
    """Parameter count, names and shapes of torchvision's ImageNet mobilenet_v2 (``default``)."""
    path = fixtures_dir() / "mobilenet_v2_state_keys.json"
    if not path.is_file():
        pytest.skip(f"published state-dict fixture not found at {path} (set HISTOSEG_FIXTURES)")
    return json.loads(path.read_text())["default"]
