"""Instance results of ``process.py`` are byte-identical to those of the code before task kinds.

The golden digests in ``golden_instance_outputs.json`` were made by ``process.py`` at commit
ac63793 (the last commit before the task mechanism) from the raw files that
:mod:`tests.process.golden_raw` writes (HoVer-Net, UNet and CHR-Net typed, FullNet untyped).
``.mat`` files are compared after their 116-byte MATLAB header text, the one field that
legitimately differs: ``scipy.io.savemat`` writes the creation time there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import process
from tests.process.golden_raw import write_raw_files

GOLDEN = Path(__file__).with_name("golden_instance_outputs.json")
MAT_HEADER = 116


def digest(path: Path) -> str:
    """sha256 of a file (of a ``.mat`` file's data after its header text)."""
    data = path.read_bytes()
    if path.suffix == ".mat":
        assert data.startswith(b"MATLAB 5.0 MAT-file"), path
        data = data[MAT_HEADER:]
    return hashlib.sha256(data).hexdigest()


def test_instance_outputs_match_the_code_before_task_kinds(tmp_path: Path) -> None:
    write_raw_files(tmp_path / "raw")
    out = tmp_path / "out"
    assert process.main(["--input", str(tmp_path / "raw"), "--output", str(out), "--formats",
                         "mat,json,geojson,png,tif", "--quiet"]) == 0
    golden = json.loads(GOLDEN.read_text())["sha256"]
    produced = {str(p.relative_to(out)): digest(p) for p in sorted(out.rglob("*")) if p.is_file()}
    assert sorted(produced) == sorted(golden)
    differing = [name for name in golden if produced[name] != golden[name]]
    assert not differing, f"outputs differ from before task kinds: {differing}"
