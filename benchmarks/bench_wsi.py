"""Whole-slide inference: memory against slide size, pipeline overhead, tissue throughput.

Writes synthetic pyramidal TIFF slides (``loader.synthetic_slide``) and runs each through
``inference.slide.run_slide`` in a fresh process, whose peak resident memory (``ru_maxrss``)
is read when it exits. Three slides:

- ``small``: the first size, with ``--tissue-cells`` cells of tissue in its centre;
- ``large``: the second size, the same tissue (the same cells, so the same nuclei);
- ``large_4x``: the second size, four times the tissue.

Prints one JSON line: peak RSS per slide and the ratios ``large / small`` (goal <= 1.1) and
``large_4x / small`` (goal <= 1.25); per slide the end-to-end seconds of the network stage
against the network's own busy seconds in the same run (goal <= 1.25) and tissue mm² per minute.

    OMP_NUM_THREADS=2 python benchmarks/bench_wsi.py --profile cpu --sizes 8192 32768
    python benchmarks/bench_wsi.py --model-path runs/x/checkpoints/best.pt --sizes 2048 4096 --tissue-cells 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loader.synthetic_slide import SyntheticSlide, write_synthetic_slide  # noqa: E402
from misc.errors import UserError, cli_main  # noqa: E402

CELL = 512


def centred_tissue(shape: tuple[int, int], cells: int) -> np.ndarray:
    """(rows, cols) bool grid with ``cells`` tissue cells in a near-square block at the centre."""
    rows, cols = math.ceil(shape[0] / CELL), math.ceil(shape[1] / CELL)
    side = math.ceil(math.sqrt(cells))
    if side > min(rows, cols):
        raise UserError(f"{cells} tissue cells do not fit a {shape[1]}x{shape[0]} slide of {CELL} px cells")
    grid = np.zeros((rows, cols), bool)
    top, left = (rows - side) // 2, (cols - side) // 2
    for k in range(cells):
        grid[top + k // side, left + k % side] = True
    return grid


def child_command(args: argparse.Namespace, slide: Path, out: Path) -> list[str]:
    """The command running one slide in a fresh process."""
    command = [sys.executable, __file__, "--child", str(slide), str(out), "--profile", args.profile,
               "--device", args.device, "--tile", str(args.tile)]
    return command + (["--model-path", args.model_path] if args.model_path else [])


def run_child(command: list[str]) -> tuple[dict, float]:
    """Run ``command``; its last stdout line (JSON) and its peak RSS in MiB."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise UserError(f"slide run failed (exit {process.returncode}): {' '.join(command)}")
    return json.loads(output.strip().splitlines()[-1]), usage.ru_maxrss / 1024.0


def child(argv: list[str]) -> int:
    """Run one slide (in this fresh process) and print its summary as one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("slide")
    parser.add_argument("out")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile", type=int, default=1024)
    args = parser.parse_args(argv)
    import torch

    from config import load_config
    from engine.distributed import resolve_device
    from inference.slide import SlideOptions, run_slide
    from models import get_family
    from models.checkpoint import load_checkpoint

    device = resolve_device(args.device)
    if args.model_path:
        family, net, _ = load_checkpoint(args.model_path, device)
    else:
        torch.manual_seed(0)
        family = get_family("hovernet")(load_config("hovernet", args.profile, overrides=["model.pretrained=null"]))
        net = family.build_network().to(device)
    family.cfg["infer"]["bn_adapt"] = 0.0
    result = run_slide(family, net, args.slide, args.out, device, SlideOptions(tile=args.tile, show_progress=False))
    print(json.dumps(result.summary))
    return 0


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Measure and print one JSON line."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return child(argv[1:])
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_wsi.py", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[8192, 32768], help="small and large slide sides (px)")
    parser.add_argument("--tissue-cells", type=int, default=16, help=f"{CELL} px tissue cells of the small slide")
    parser.add_argument("--mpp", type=float, default=0.25, help="µm per pixel of the slides (default 0.25)")
    parser.add_argument("--profile", default="cpu", help="hovernet profile of a random-weight network (default cpu)")
    parser.add_argument("--model-path", default=None, help="a checkpoint instead of random weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile", type=int, default=1024, help="post-processing tile side")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the slides and outputs, made if missing (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    small, large = args.sizes
    cases = {"small": (small, args.tissue_cells), "large": (large, args.tissue_cells),
             "large_4x": (large, 4 * args.tissue_cells)}
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        results: dict[str, dict] = {}
        for name, (side, cells) in cases.items():
            layout = SyntheticSlide((side, side), centred_tissue((side, side), cells), cell=CELL, mpp=args.mpp,
                                    pool_size=8)
            start = time.perf_counter()
            path = write_synthetic_slide(work / f"{name}.tif", layout)
            written = time.perf_counter() - start
            summary, rss = run_child(child_command(args, path, work / "out"))
            seconds = summary["seconds"]
            stage = seconds["setup"] + seconds["network"] + seconds.get("postproc_tail", 0.0)
            results[name] = {
                "side": side, "tissue_cells": cells, "tissue_mm2": summary["tissue_mm2"],
                "windows": summary["windows"]["run"], "nuclei": summary["nuclei"], "peak_rss_mib": round(rss, 1),
                "seconds_total": seconds["total"], "seconds_network_busy": seconds["network_busy"],
                "network_stage_over_network": round(stage / max(seconds["network_busy"], 1e-9), 3),
                "total_over_network": round(seconds["total"] / max(seconds["network_busy"], 1e-9), 3),
                "tissue_mm2_per_min": round(summary["tissue_mm2"] / seconds["total"] * 60, 4),
                "seconds_writing_slide": round(written, 1),
            }
            (work / f"{name}.tif").unlink()
    line = {
        "bench": "wsi", "profile": args.model_path or args.profile, "device": args.device,
        "threads": os.environ.get("OMP_NUM_THREADS"), "mpp": args.mpp, "slides": results,
        "rss_large_over_small": round(results["large"]["peak_rss_mib"] / results["small"]["peak_rss_mib"], 3),
        "rss_large4x_over_small": round(results["large_4x"]["peak_rss_mib"] / results["small"]["peak_rss_mib"], 3),
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
