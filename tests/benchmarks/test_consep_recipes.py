"""The CoNSeP recipes' fixed split and scripts (no training)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.conftest import REPO_ROOT

RECIPES = REPO_ROOT / "benchmarks" / "recipes"


def test_split_groups_the_patches_by_source_image():
    parts = json.loads((RECIPES / "consep_split.json").read_text())["parts"]
    images = {part: {re.match(r"^train_(\d+)_\d+$", name).group(1) for name in names} for part, names in parts.items()}
    assert not images["train"] & images["valid"]
    assert len(images["train"] | images["valid"]) == 27 and len(images["valid"]) == 5
    assert len(parts["train"]) + len(parts["valid"]) == 432 and len(set(parts["train"] + parts["valid"])) == 432


def test_split_covers_the_shared_copy(data_root):
    folder = data_root / "consep" / "images"
    if not folder.is_dir():
        pytest.skip("no consep folder in the shared data")
    parts = json.loads((RECIPES / "consep_split.json").read_text())["parts"]
    assert sorted(parts["train"] + parts["valid"]) == sorted(p.stem for p in folder.glob("*.jpg"))


@pytest.mark.parametrize("script", ["consep_common.sh", "consep_unet_cpu.sh", "consep_hovernet_cpu.sh", "consep_ensemble_cpu.sh"])
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(RECIPES / script)], check=True)


def test_ensemble_recipe_needs_both_checkpoints(tmp_path):
    done = subprocess.run(["bash", str(RECIPES / "consep_ensemble_cpu.sh"), str(tmp_path), str(tmp_path / "u"), str(tmp_path / "h")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "run its recipe first" in done.stderr
