"""Peak memory of the folder runner stays far below the size of the stitched maps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from misc.io import write_image
from tests.conftest import REPO_ROOT

SCRIPT = """
import json, resource, sys, zipfile
from pathlib import Path
import numpy as np
import torch
torch.set_num_threads(1)
from inference.folder import run_folder
from tests.inference.toy_family import toy_family
channels, tmp = int(sys.argv[1]), Path(sys.argv[2])
family, net = toy_family(input_size=128, output_size=128, batch_size=4)
family.cfg["model"]["extra_channels"] = channels
run_folder(family, net, tmp / "small", tmp / "warm", "cpu", show_progress=False)  # imports and buffers warmed up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run_folder(family, net, tmp / "images", tmp / "out", "cpu", show_progress=False)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with zipfile.ZipFile(tmp / "out" / "big.npz") as archive, archive.open("extra.npy") as member:
    assert np.lib.format.read_magic(member) == (2, 0)
    shape = np.lib.format.read_array_header_2_0(member)[0]
print(json.dumps({"before_kib": before, "after_kib": after, "extra_shape": shape}))
"""


def test_peak_memory_is_bounded_by_a_band_not_the_image(tmp_path: Path) -> None:
    side, channels = 2048, 16
    ramp = np.linspace(0, 255, side).astype(np.uint8)
    image = np.repeat(((ramp[:, None].astype(np.uint16) + ramp[None, :]) // 2).astype(np.uint8)[..., None], 3, axis=2)
    write_image(tmp_path / "images" / "big.png", image)
    write_image(tmp_path / "small" / "small.png", image[:300, :300])
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(channels), str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["extra_shape"] == [side, side, channels]
    stitched_mib = side * side * (channels + 6) * 4 / 2**20  # every map of the image, float32: 352 MiB
    growth_mib = (result["after_kib"] - result["before_kib"]) / 1024
    assert growth_mib < stitched_mib / 4, f"peak RSS grew by {growth_mib:.0f} MiB for {stitched_mib:.0f} MiB of maps"
