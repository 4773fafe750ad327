"""Bad input from the command line: one line on stderr naming the culprit, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT


def _folder_dataset(root: Path, image_bytes: bytes | None = None, label_shape=(8, 8)) -> Path:
    """A one-image ``folder`` dataset; ``image_bytes`` replaces the PNG with raw bytes."""
    from misc.io import write_image

    (root / "images").mkdir(parents=True)
    (root / "inst").mkdir()
    if image_bytes is None:
        write_image(root / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    else:
        (root / "images" / "a.png").write_bytes(image_bytes)
    np.save(root / "inst" / "a.npy", np.zeros(label_shape, np.int32))
    return root


def _cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Each case: (argv after the interpreter, a pattern the one error line must contain)."""
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("train:\n  seed: [1\n")
    return {
        "bad path": (["-m", "loader.stats", "folder", str(tmp / "nowhere")], "nowhere"),
        "unreadable image": (
            ["-m", "loader.stats", "folder", str(_folder_dataset(tmp / "corrupt", b"not a png"))],
            "a.png",
        ),
        "wrong-shape label": (
            ["-m", "loader.stats", "folder", str(_folder_dataset(tmp / "shape", label_shape=(5, 8)))],
            "a.npy",
        ),
        "bad yaml": (["train.py", "--model", "hovernet", "--config", str(bad_yaml), "--summary"], "bad.yaml"),
        "unknown key": (["train.py", "--model", "hovernet", "--set", "model.mdoe=fast", "--summary"], "model.mode"),
        "wrong type": (["train.py", "--model", "hovernet", "--set", "model.nr_types=abc", "--summary"], "model.nr_types"),
    }


CASE_NAMES = ["bad path", "unreadable image", "wrong-shape label", "bad yaml", "unknown key", "wrong type"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input_gives_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    argv, pattern = _cases(tmp_path)[case]
    proc = subprocess.run(
        [sys.executable, *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], proc.stderr
