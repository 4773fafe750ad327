"""process.py --set / --sweep: post-processing options changed and chosen without re-inference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import process
from inference.folder import run_folder
from inference.processing import PostprocOverrideError, process_folder
from inference.sweep import Sweep, best_value, parse_sweep, read_score, run_sweep
from misc.errors import UserError
from misc.io import write_image
from tests.inference.toy_family import nuclei_image, toy_family, toy_registered  # noqa: F401  (fixture)

THRESHOLDS = (0.5, 0.75, 0.9)


@pytest.fixture
def scored(tmp_path: Path, toy_registered: None) -> tuple[Path, str]:  # noqa: F811
    """Raw toy predictions of two images and a ground truth equal to their post-processing at
    threshold 0.75 (the dark discs, p 0.84, without the red ones, p 0.69): 0.75 scores PQ 1,
    the default 0.5 (red discs too) and 0.9 (nothing) less."""
    family, net = toy_family()
    gt = tmp_path / "gt"
    for k in range(2):
        image = nuclei_image((72, 60), seed=k)
        write_image(tmp_path / "images" / f"tile{k}.png", image)
        write_image(gt / "images" / f"tile{k}.png", image)
    run_folder(family, net, tmp_path / "images", tmp_path / "raw", "cpu", mag=20, show_progress=False)
    high = family.__class__({**family.cfg, "postproc": {"threshold": 0.75}})
    (gt / "inst").mkdir()
    for k in range(2):
        with np.load(tmp_path / "raw" / f"tile{k}.npz") as data:
            maps = {key: data[key] for key in ("np_prob", "tp_prob")}
        np.save(gt / "inst" / f"tile{k}.npy", high.postprocess(maps)["inst_map"])
    return tmp_path / "raw", f"folder:{gt}"


def pq(folder: Path) -> float:
    return json.loads((folder / "metrics.json").read_text())["mean"]["pq"]["mean"]


def test_set_changes_the_post_processing_of_the_stored_config(scored, tmp_path: Path) -> None:
    raw, gt = scored
    process_folder(raw, tmp_path / "default", formats=["json"], gt=gt, show_progress=False)
    process_folder(raw, tmp_path / "high", formats=["json"], gt=gt, show_progress=False, postproc=["postproc.threshold=0.75"])
    assert pq(tmp_path / "high") == 1.0 and pq(tmp_path / "default") < 1.0


@pytest.mark.parametrize("override, message", [
    ("postproc.treshold=0.3", "unknown key 'postproc.treshold'; did you mean 'postproc.threshold'?"),
    ("postproc.threshold=low", "key 'postproc.threshold' expects float"),
])
def test_a_bad_override_stops_the_run_naming_the_key(scored, tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(PostprocOverrideError, match=message):
        process_folder(scored[0], tmp_path / "out", formats=["json"], show_progress=False, postproc=[override])


def test_sweep_scores_every_value_and_writes_the_best_ones_results(scored, tmp_path: Path) -> None:
    raw, gt = scored
    result = run_sweep(raw, tmp_path / "out", Sweep("postproc.threshold", THRESHOLDS), gt, formats=["json"],
                       show_progress=False)
    assert result.best == 0.75 and result.score == "mean.pq.mean" and result.scores[1] == 1.0
    assert result.scores[0] < 1.0 and result.scores[2] < 1.0
    table = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert table["values"] == list(THRESHOLDS) and table["best"] == 0.75 and table["scores"] == list(result.scores)
    assert pq(tmp_path / "out") == 1.0
    for value, score in zip(THRESHOLDS, result.scores):
        assert pq(tmp_path / "out" / "sweep" / f"postproc.threshold={value}") == score


def test_sweep_cli_maximises_the_named_score(scored, tmp_path: Path) -> None:
    raw, gt = scored
    argv = ["--input", str(raw), "--output", str(tmp_path / "out"), "--formats", "json", "--gt", gt, "--quiet",
            "--sweep", "postproc.threshold=0.9,0.75", "--sweep-score", "mean.aji.mean"]
    assert process.main(argv) == 0
    lines = (tmp_path / "out" / "sweep.csv").read_text().splitlines()
    assert lines[0] == "postproc.threshold,mean.aji.mean" and lines[2] == "0.75,1.0"
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["best"] == 0.75


def test_best_value_takes_the_first_of_a_tie_and_skips_undefined_scores() -> None:
    sweep = Sweep("postproc.h", (5, 10, 20, 40))
    assert best_value(sweep, (math.nan, 0.4, 0.4, 0.1)) == 10
    with pytest.raises(UserError, match="no value gave a defined score"):
        best_value(sweep, (math.nan,) * 4)


def test_read_score_follows_the_dotted_path_and_names_what_is_there(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"mean": {"pq": {"mean": 0.25}}, "pooled": {"r2": None}}))
    assert read_score(path, "mean.pq.mean") == 0.25 and math.isnan(read_score(path, "pooled.r2"))
    with pytest.raises(UserError, match=r"has no 'mpq' there \(it has \['pq'\]\)"):
        read_score(path, "mean.mpq")


@pytest.mark.parametrize("text, message", [
    ("postproc.h=10", "two or more values"),
    ("postproc.h=10,,40", "two or more values"),
    ("infer.tta=true,false", "changes the post-processing only"),
    ("postproc.h=10,10", "listed twice"),
])
def test_parse_sweep_refuses_what_it_cannot_run(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_sweep(text)


def test_parse_sweep_reads_yaml_values() -> None:
    assert parse_sweep("postproc.h=10,40.5,150") == Sweep("postproc.h", (10, 40.5, 150))


@pytest.mark.parametrize("extra, message", [
    (["--sweep", "postproc.h=1,2"], "--sweep and --sweep-score score against --gt"),
    (["--gt", "folder:x", "--sweep-score", "mean.pq.mean"], "--sweep-score names the score of a --sweep"),
    (["--gt", "folder:x", "--sweep", "postproc.h=1,2", "--set", "postproc.h=3"], "--set postproc.h: that key is"),
    (["--set", "infer.tta=false"], "--set infer.tta=false: process.py changes the post-processing only"),
])
def test_bad_sweep_arguments_are_one_line_errors(tmp_path: Path, capsys, extra: list, message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        process.main(["--input", str(tmp_path), "--output", str(tmp_path / "out"), *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
