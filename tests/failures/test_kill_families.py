"""Kill and resume, for every registered family: training killed with SIGKILL mid-epoch and
resumed ends with the weights of an uninterrupted run (bit-identical on CPU); ``infer.py`` and
``process.py`` killed mid-folder and run again end with the outputs of an uninterrupted run.

The killed run is a forked copy of the test process that sends itself SIGKILL at a chosen
moment (no clean-up code runs, as with a real kill), so no interpreter start-up is paid and the
moment does not depend on timing."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import infer
import process
import train
from models import get_family
from tests.failures.conftest import BUILT_IN, IMAGE_FAMILIES, run_main, tiles

#: Per family, ``--set`` overrides of its demo profile that make a run of two epochs of two
#: steps (with the profile's augmentations) on tiny synthetic data, without validation or
#: data-loading workers.
TINY = {
    "hovernet": ["model.mode=same", "data.synthetic={n_train: 4, n_val: 0, size: 64, seed: 0}", "data.patch_size=64",
                 "infer.input_size=64", "infer.output_size=64", "train.phases.0.epochs=2"],
    "fullnet": ["data.synthetic={n_train: 4, n_val: 0, size: 48, seed: 0}", "train.phases.0.epochs=2"],
    "unet": ["data.synthetic={n_train: 4, n_val: 0, size: 64, seed: 0}", "data.patch_size=64", "train.phases.0.batch_size=2",
             "train.phases.0.epochs=2", "infer.input_size=64", "infer.output_size=64", "infer.keep_margin=8"],
    "chrnet": ["data.synthetic={n_train: 4, n_val: 0, size: 102, seed: 0}", "train.phases.0.epochs=2"],
    "histosegnet": ["data.synthetic.n_train=4", "data.synthetic.n_val=0", "data.synthetic.size=64", "infer.input_size=64",
                    "infer.output_size=64", "train.phases.0.epochs=2", "train.phases.0.batch_size=2"],
    "h2gnet": ["data.synthetic={train: 2, val: 0, test: 1, size: 2048, mpp: 1.0, seed: 0}",
               "stages.detect.train.phases.0.epochs=2", "stages.detect.train.phases.0.batches_per_epoch=2",
               "stages.detect.train.phases.0.batch_size=2", "stages.refine.train.phases.0.epochs=2"],
}


def test_every_family_has_tiny_settings() -> None:
    assert sorted(TINY) == BUILT_IN


def killed(work: Callable[[], object], hook: tuple[type, str, Callable[[], bool]]) -> None:
    """Run ``work`` in a forked copy of this process that SIGKILLs itself the first time the
    method ``hook = (class, name, condition)`` is called while ``condition()`` holds."""
    owner, name, condition = hook
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        try:
            original = getattr(owner, name)

            def tripwire(*args, **kwargs):
                if condition():
                    os.kill(os.getpid(), signal.SIGKILL)
                return original(*args, **kwargs)

            setattr(owner, name, tripwire)
            work()
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"child ended with status {status}"


def _checkpoints(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every ``latest.pt`` of a run folder (one per stage for staged families) -> its weights."""
    return {str(path.relative_to(run)): torch.load(path, map_location="cpu", weights_only=True)["model"]
            for path in sorted(run.rglob("latest.pt"))}


@pytest.mark.parametrize("family", BUILT_IN)
def test_training_killed_mid_epoch_resumes_bit_identical(family: str, tmp_path: Path) -> None:
    args = ["--model", family, "--profile", "demo", "--data", "synthetic", "--device", "cpu", "--num-threads", "1",
            "--quiet", "--set", "data.num_workers=0", *[a for s in TINY[family] for a in ("--set", s)]]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    outcome = run_main(train.main, [*args, "--out", whole])
    assert outcome.code == 0, outcome.text

    def first_step_after_a_checkpoint() -> bool:  # epoch 2, step 1 of 2
        return any(cut.rglob("latest.pt"))

    killed(lambda: train.main([*args, "--out", str(cut)]), (get_family(family), "loss", first_step_after_a_checkpoint))
    first = next(cut.rglob("latest.pt"))
    assert torch.load(first, map_location="cpu", weights_only=True)["epoch"] == 1  # killed inside epoch 2

    outcome = run_main(train.main, [*args, "--out", cut, "--resume"])
    assert outcome.code == 0, outcome.text
    expected, resumed = _checkpoints(whole), _checkpoints(cut)
    assert expected.keys() == resumed.keys() and expected
    for name, weights in expected.items():
        assert weights.keys() == resumed[name].keys()
        assert all(torch.equal(weights[key], resumed[name][key]) for key in weights), name


def _content(path: Path) -> object:
    """A file's content: its bytes, or for ``.mat`` its variables (the header holds a time)."""
    if path.suffix != ".mat":
        return path.read_bytes()
    import scipy.io

    return {key: value.tobytes() for key, value in scipy.io.loadmat(path).items() if not key.startswith("__")}


def _files(folder: Path) -> dict[str, object]:
    """Relative path -> content of every file under ``folder``."""
    return {str(p.relative_to(folder)): _content(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _raw_maps(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """Raw file name -> its arrays (but ``source``)."""
    out = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as raw:
            out[path.name] = {key: raw[key] for key in raw.files if key != "source"}
    return out


@pytest.fixture(scope="module")
def three_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic tiles (images/)."""
    return tiles(tmp_path_factory.mktemp("three"), n=3) / "images"


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_infer_and_process_killed_mid_folder_end_with_the_same_outputs(family: str, checkpoints, three_tiles: Path,
                                                                       tmp_path: Path) -> None:
    infer_args = ["--model-path", checkpoints[family], "--input", three_tiles, "--device", "cpu", "--workers", "1",
                  "--quiet"]
    outcome = run_main(infer.main, [*infer_args, "--output", tmp_path / "raw"])
    assert outcome.code == 0, outcome.text
    cut = tmp_path / "raw-cut"
    killed(lambda: infer.main([str(a) for a in infer_args] + ["--output", str(cut)]),
           (get_family(family), "predict", lambda: any(cut.glob("*.npz"))))
    assert 1 <= len(list(cut.glob("*.npz"))) < 3  # killed after the first image, before the last
    outcome = run_main(infer.main, [*infer_args, "--output", cut])
    assert outcome.code == 0, outcome.text
    expected, rerun = _raw_maps(tmp_path / "raw"), _raw_maps(cut)
    assert sorted(p.name for p in cut.iterdir()) == sorted(expected) and len(expected) == 3
    assert all(rerun[name].keys() == maps.keys() and all(np.array_equal(maps[k], rerun[name][k]) for k in maps)
               for name, maps in expected.items())

    process_args = ["--input", tmp_path / "raw", "--quiet"]
    assert run_main(process.main, [*process_args, "--output", tmp_path / "out"]).code == 0
    out_cut = tmp_path / "out-cut"
    killed(lambda: process.main([str(a) for a in process_args] + ["--output", str(out_cut)]),
           (get_family(family), "postprocess", lambda: any(p.is_file() for p in out_cut.rglob("*"))))
    assert 0 < len(_files(out_cut)) < len(_files(tmp_path / "out"))
    outcome = run_main(process.main, [*process_args, "--output", out_cut])
    assert outcome.code == 0, outcome.text
    assert _files(out_cut) == _files(tmp_path / "out")
