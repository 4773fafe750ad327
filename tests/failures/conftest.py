"""Fixtures of the failure matrix and the kill tests: one untrained checkpoint per registered
family (its ``demo`` profile, written once per session through the engine's checkpoint writer),
small image folders, and in-process runs of the scripts' ``main(argv)``."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest

from config import load_config, stage_config, stage_names
from engine.checkpoint import save_checkpoint, stages_checkpoint
from engine.run import seed_everything
from loader.synthetic import write_dataset
from models import FAMILIES, defaults_path, get_family

#: The families the package registers (the tests' plugin families register classes, not paths).
BUILT_IN = sorted(name for name, target in FAMILIES.items() if isinstance(target, str))
#: Those whose inference also runs on folders of image tiles (not ``Family.slides_only``).
IMAGE_FAMILIES = [name for name in BUILT_IN if not get_family(name).slides_only]
#: Those whose inference runs on whole slides only (``Family.slides_only``).
SLIDES_ONLY = [name for name in BUILT_IN if get_family(name).slides_only]
#: Side of the images the matrix runs on (pixels): smaller than most windows, so one window each.
SIDE = 48


@dataclass(frozen=True)
class Outcome:
    """What one in-process script run gave: its exit code and the non-empty stderr lines."""

    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def one_error(self) -> str:
        """The single ``error:`` line of a refused run (exit 2, nothing else on stderr)."""
        assert self.code == 2, self.text
        assert "Traceback" not in self.text
        assert len(self.lines) == 1 and self.lines[0].startswith("error: "), self.text
        return self.lines[0]


def run_main(main: Callable[[Sequence[str]], int], argv: Sequence[str | Path]) -> Outcome:
    """Call a script's ``main(argv)`` in this process with stderr captured; an exception other
    than ``SystemExit`` (a traceback a user would see) fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as stop:
            code = stop.code
    logging.getLogger().handlers.clear()  # setup_logging's handler writes to the closed buffer
    return Outcome(int(code or 0), [line for line in err.getvalue().splitlines() if line.strip()])


def task_of(family: str, purpose: str) -> str:
    """The task a family declares for ``purpose`` (``'train'`` or ``'infer'``) with its demo config."""
    cls = get_family(family)
    return cls(demo_config(family)).task_for(purpose)


def demo_config(family: str) -> dict:
    """The family's resolved ``demo`` profile."""
    return load_config(family, "demo", defaults_path=defaults_path(family))


def tiles(root: Path, n: int = 1, seed: int = 3) -> Path:
    """A ``folder`` dataset of ``n`` synthetic SIDE x SIDE tiles (images/, inst/, types/)."""
    write_dataset(root, n, seed=seed, shape=(SIDE, SIDE))
    return root


def _entry(family: str, cfg: dict, image: np.ndarray) -> dict:
    """A checkpoint entry of an untrained network (seeded), as ``train.py`` writes them."""
    seed_everything(int(cfg["train"]["seed"]))
    fam = get_family(family)(cfg)
    net = fam.build_network()
    return {"model": net.state_dict(), "config": copy.deepcopy(cfg), "family": family,
            "norm_stats": fam.fit_norm_stats([image]), "family_state": {}, "epoch": 0, "step": 0,
            "best_metric": None}


def write_untrained(family: str, path: Path, image: np.ndarray) -> Path:
    """An untrained checkpoint of ``family`` (demo profile) at ``path``: one entry, or every
    stage's (``engine.checkpoint.stages_checkpoint``) for a staged family."""
    cfg = demo_config(family)
    names = stage_names(cfg)
    if names:
        checkpoint = stages_checkpoint(family, cfg, {s: _entry(family, stage_config(cfg, s), image) for s in names})
    else:
        checkpoint = _entry(family, cfg, image)
    return save_checkpoint(path, checkpoint)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Family name -> an untrained demo-profile checkpoint, for every built-in family."""
    from misc.io import read_image

    root = tmp_path_factory.mktemp("checkpoints")
    image = read_image(next((tiles(root / "fit") / "images").iterdir()))
    return {family: write_untrained(family, root / f"{family}.pt", image) for family in BUILT_IN}


def truncated_copy(source: Path, target: Path) -> Path:
    """``target``: the first half of ``source``'s bytes (a copy cut short, as by a full disk)."""
    data = source.read_bytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data[: len(data) // 2])
    return target


def png_bytes(image: np.ndarray) -> bytes:
    """``image`` encoded as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class InferRun:
    """``infer.py`` over one family's mixed folder: the outcome, the images and the raw files."""

    outcome: Outcome
    images: Path
    raw: Path


#: Images of the mixed folder that ``infer.py`` must skip and report (exit 1), by case.
UNREADABLE = {"corrupt image": "corrupt.png", "truncated image": "truncated.png", "greyscale": "grey.png"}
#: Images it must read as the same RGB picture as ``good.png``, by case.
EQUIVALENT = {"RGBA": "rgba.png", "16-bit": "deep.tif"}


def mixed_folder(root: Path) -> Path:
    """``good.png`` (a synthetic tile) beside every variant of :data:`UNREADABLE` and
    :data:`EQUIVALENT`: the same picture as RGBA (opaque) and as 16-bit RGB TIFF (x 257)."""
    import tifffile

    from misc.io import read_image

    source = tiles(root / "tiles")
    good = read_image(source / "images" / "tile_0000.png")
    folder = root / "images"
    folder.mkdir(parents=True)
    (folder / "good.png").write_bytes(png_bytes(good))
    (folder / "rgba.png").write_bytes(png_bytes(np.dstack([good, np.full(good.shape[:2], 255, np.uint8)])))
    tifffile.imwrite(folder / "deep.tif", good.astype(np.uint16) * 257, photometric="rgb")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not image data")
    (folder / "truncated.png").write_bytes(png_bytes(good)[:200])
    (folder / "grey.png").write_bytes(png_bytes(good[..., 0]))
    return folder


@pytest.fixture(scope="session")
def infer_runs(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], InferRun]:
    """Family -> its :class:`InferRun` on a :func:`mixed_folder` (run once, on first use)."""
    import infer

    done: dict[str, InferRun] = {}

    def get(family: str) -> InferRun:
        if family not in done:
            root = tmp_path_factory.mktemp(f"infer-{family}")
            images = mixed_folder(root)
            outcome = run_main(infer.main, ["--model-path", checkpoints[family], "--input", images,
                                            "--output", root / "raw", "--device", "cpu", "--workers", "1", "--quiet"])
            done[family] = InferRun(outcome, images, root / "raw")
        return done[family]

    return get
