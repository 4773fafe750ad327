"""A run killed with SIGKILL mid-folder resumes: finished images are kept, the rest are redone."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from inference.folder import run_folder
from misc.io import write_image
from tests.conftest import REPO_ROOT
from tests.inference.toy_family import nuclei_image, toy_family

SCRIPT = """
import sys
from pathlib import Path
from inference.folder import run_folder
from tests.inference.toy_family import toy_family
family, net = toy_family(batch_size=1)
family.cfg["model"]["delay"] = 0.05
run_folder(family, net, Path(sys.argv[1]), Path(sys.argv[2]), "cpu", show_progress=False)
"""


def test_sigkill_then_rerun_completes_without_leftovers(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    for name in ("a", "b", "c"):
        write_image(images / f"{name}.png", nuclei_image((64, 64)))  # 16 windows: about 1 s per image
    child = subprocess.Popen([sys.executable, "-c", SCRIPT, str(images), str(out)], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (out / "a.npz").is_file() and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.02)
        time.sleep(0.3)  # well inside image b
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert (out / "a.npz").is_file() and not (out / "c.npz").exists()
    assert any(p.name.startswith(".b.") for p in out.iterdir())  # the killed image's buffer is left behind
    family, net = toy_family()
    report = run_folder(family, net, images, out, "cpu", show_progress=False)
    assert [p.name for p in report.skipped] == ["a.png"]
    assert [p.name for p in report.done] == ["b.png", "c.png"]
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "b.npz", "c.npz"]
