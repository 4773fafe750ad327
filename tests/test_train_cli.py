"""``train.py`` refuses bad input with one clear line and exit code 2 (run as subprocesses)."""

from __future__ import annotations

import copy

import pytest
import torch

from config import load_config
from engine.checkpoint import save_checkpoint
from engine.run import seed_everything
from models import defaults_path, load_plugins
from tests.engine.helpers import PLUGIN, run_train


def _refused(*args, plugin: bool = True) -> str:
    """Run train.py, check it exits 2 with a single 'error:' line and no traceback; return the line."""
    done = run_train(*args, plugin=plugin)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert lines and lines[-1].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1
    return lines[-1]


@pytest.fixture(scope="module")
def cascade_checkpoint(tmp_path_factory):
    """A checkpoint of toy_phases (model.width 4), as train.py writes them, without training."""
    load_plugins([PLUGIN])
    from tests.engine.toy_families import PhasedFamily

    cfg = load_config("toy_phases", defaults_path=defaults_path("toy_phases"))
    seed_everything(0)
    net = PhasedFamily(cfg).build_network()
    optimizer = torch.optim.Adam(net.parameters())
    path = tmp_path_factory.mktemp("ckpt") / "checkpoints" / "latest.pt"
    save_checkpoint(path, {
        "model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": {}, "scaler": None,
        "epoch": 1, "step": 2, "phase": 0, "rng": {}, "config": copy.deepcopy(cfg), "family": "toy_phases",
        "norm_stats": None, "best_metric": None,
    })
    return path


def test_unknown_family_is_refused():
    line = _refused("--model", "hovernett", "--data", "synthetic", plugin=False)
    assert "unknown model family 'hovernett'" in line and "did you mean 'hovernet'" in line


def test_unknown_data_kind_is_refused(tmp_path):
    line = _refused("--model", "toy_phases", "--data", f"consep_matt:{tmp_path}", "--out", tmp_path / "run")
    assert "consep_matt" in line


def test_unknown_profile_is_refused():
    line = _refused("--model", "toy_phases", "--profile", "nosuch")
    assert "unknown profile 'nosuch'" in line


def test_resume_from_another_family_is_refused(cascade_checkpoint):
    line = _refused("--model", "toy_patchcls", "--resume", cascade_checkpoint)
    assert "family 'toy_phases'" in line and "--model is 'toy_patchcls'" in line


def test_resume_with_another_model_layout_is_refused(cascade_checkpoint):
    line = _refused("--model", "toy_phases", "--set", "model.width=8", "--resume", cascade_checkpoint)
    assert "model.width=4 (this run: 8)" in line


def test_existing_run_folder_without_resume_is_refused(cascade_checkpoint):
    line = _refused("--model", "toy_phases", "--out", cascade_checkpoint.parent.parent)
    assert "already holds a run" in line and "--resume" in line


def test_empty_dataset_is_refused(tmp_path):
    line = _refused("--model", "toy_phases", "--data", "synthetic", "--set", "data.synthetic.n_train=0",
                    "--out", tmp_path / "run")
    assert "no training samples" in line


def test_summary_prints_layer_table_ending_with_params(tmp_path):
    done = run_train("--model", "toy_phases", "--summary", "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "params: 270"  # detect 3*4*9+4 + 4*1+1 = 117; refine 4*4*9+4 + 4+1 = 153
    assert any(line.startswith("refine.0 ") for line in lines)
    assert not (tmp_path / "run").exists()



def test_missing_anchor_image_is_refused_naming_it(tmp_path):
    line = _refused("--model", "fullnet", "--profile", "demo", "--anchor", tmp_path / "no_anchor.png",
                    "--out", tmp_path / "run", plugin=False)
    assert "no_anchor.png" in line


def test_anchor_for_a_family_without_colour_normalisation_is_refused(tmp_path):
    line = _refused("--model", "toy_patchcls", "--anchor", tmp_path / "a.png", "--summary")
    assert "reinhard_anchor" in line
