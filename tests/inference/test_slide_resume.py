"""A slide run killed with SIGKILL mid-network resumes from its journal and tile files and ends
with outputs identical to an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inference.slide import SlideOptions, run_slide
from tests.conftest import REPO_ROOT
from tests.inference.toy_family import toy_family
from tests.inference.slide_helpers import assert_same_outputs, make_slide

pytestmark = pytest.mark.slow

SCRIPT = """
import sys
from inference.slide import SlideOptions, run_slide
from tests.inference.toy_family import toy_family
family, net = toy_family(input_size=96, output_size=64, batch_size=8)
family.cfg["model"]["delay"] = 0.3
run_slide(family, net, sys.argv[1], sys.argv[2], "cpu", SlideOptions(tile=256, margin=48, show_progress=False))
"""


def test_sigkill_then_rerun_gives_identical_outputs(tmp_path: Path) -> None:
    make_slide(tmp_path / "s.tif", (640, 896), tissue=0.5)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    journal = killed / "s" / ".work" / "batches.done"
    child = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / "s.tif"), str(killed)], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None and \
                (not journal.is_file() or len(journal.read_text().split()) < 4):
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (killed / "s" / "s.summary.json").exists() and len(journal.read_text().split()) >= 4
    options = SlideOptions(tile=256, margin=48, show_progress=False)
    family, net = toy_family(input_size=96, output_size=64, batch_size=8)
    resumed = run_slide(family, net, tmp_path / "s.tif", killed, "cpu", options)
    assert not resumed.skipped and resumed.summary["nuclei"] > 0
    run_slide(family, net, tmp_path / "s.tif", clean, "cpu", options)
    assert_same_outputs(killed / "s", clean / "s", "s")
    assert sorted(p.name for p in (killed / "s").iterdir()) == sorted(p.name for p in (clean / "s").iterdir())
