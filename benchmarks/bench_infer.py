"""Inference and processing throughput.

Prints one JSON line per measurement:

- ``infer``: tiles (windows) per second through the whole tiled path (``inference.predict.infer_image``:
  window gathering, ``family.predict``, stitching) for HoVer-Net ``original`` and ``fast`` at
  published size (random weights) and for the ``cpu`` profile of ``opt/hovernet.yaml``, in
  ``infer.py``'s precision and memory format (``infer.amp``, ``infer.channels_last``: bf16 NHWC
  in the ``cpu`` profile, float32 NCHW in ``cpu-float32``; one decoder per branch instead of the
  profile's shared decoder in ``cpu-separate``);
- ``process``: seconds per 1000x1000 image for ``process.py``'s work on one raw file (HoVer-Net
  post-processing of ~600 nuclei and writing .mat, .json, .geojson and the overlay .png).

    OMP_NUM_THREADS=2 python benchmarks/bench_infer.py [--device auto] [--grid 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_postproc import synthetic_maps  # noqa: E402
from config import load_config  # noqa: E402
from misc.errors import cli_main  # noqa: E402
from engine.distributed import resolve_device  # noqa: E402
from inference.predict import infer_image, inference_precision# noqa: E402
from inference.processing import process_raw# noqa: E402
from inference.rawfile import RawRef# noqa: E402
from loader.synthetic import generate_tile  # noqa: E402
from inference.tiling import TileSpec, window_count  # noqa: E402
from models import get_family  # noqa: E402
from postproc.formats import FORMATS  # noqa: E402

SETTINGS = (
    ("original", "paper", []),
    ("fast", "paper", ["model.mode=fast", "infer.input_size=256", "infer.output_size=164"]),
    ("cpu", "cpu", []),
    ("cpu-float32", "cpu", ["infer.amp=false", "infer.channels_last=false"]),
    ("cpu-separate", "cpu", ["model.decoder.shared=false"]),
)


def bench_infer(name: str, profile: str, overrides: list[str], device: torch.device, grid: int,
                batch_size: int | None) -> dict:
    """Windows per second of tiled HoVer-Net inference on an image of ``grid`` x ``grid`` window steps
    (with the profile's TTA, if any)."""
    cfg = load_config("hovernet", profile, overrides=[*overrides, "model.pretrained=null"])
    family = get_family("hovernet")(cfg)
    net = family.build_network().to(device).eval()
    amp_dtype = inference_precision(family, net, device)
    infer_cfg = cfg["infer"]
    spec = TileSpec.from_config(infer_cfg)
    side = grid * spec.stride
    image = generate_tile(0, (side, side))[0]
    tiles = window_count((side, side), spec)
    batch = batch_size or infer_cfg["batch_size"]
    infer_image(family, net, image[: infer_cfg["output_size"], : infer_cfg["output_size"]], device, batch,
                amp_dtype=amp_dtype)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    infer_image(family, net, image, device, batch, amp_dtype=amp_dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "bench": "infer", "setting": name, "profile": profile, "mode": cfg["model"]["mode"],
        "encoder": cfg["model"]["encoder"], "window": [infer_cfg["input_size"], infer_cfg["output_size"]],
        "tta": bool(infer_cfg.get("tta")), "amp": str(amp_dtype or "float32").replace("torch.", ""),
        "channels_last": next(p for p in net.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last),
        "batch_size": batch, "tiles": tiles, "device": str(device),
        "threads": torch.get_num_threads(), "tiles_per_s": round(tiles / seconds, 3), "seconds": round(seconds, 2),
    }


def bench_process(repeats: int) -> dict:
    """Median seconds to post-process one 1000x1000 raw file and write every format."""
    maps = synthetic_maps(seed=0, size=1000, density=6.0, noise=0.1)
    cfg = load_config("hovernet", "paper", overrides=["model.nr_types=4"])
    image = generate_tile(0, (1000, 1000))[0]
    times, nuclei = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        raw_path = Path(tmp) / "tile.npz"
        np.savez(raw_path, np_prob=maps["np_prob"], hv=maps["hv"], tp_prob=maps["tp_prob"], family=np.array("hovernet"),
                 config=np.array(json.dumps(cfg)), mag=np.array(40), source=np.array("synthetic"), image=image)
        for _ in range(repeats):
            start = time.perf_counter()
            _, _, inst_map, _ = process_raw(RawRef(raw_path), Path(tmp) / "out", FORMATS, None, True)
            times.append(time.perf_counter() - start)
            nuclei = int(len(np.unique(inst_map)) - 1)
    return {
        "bench": "process", "image": [1000, 1000], "nuclei": nuclei, "formats": list(FORMATS),
        "repeats": repeats, "seconds_per_image": round(float(np.median(times)), 3),
    }


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print their JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--grid", type=int, default=2, help="image of grid x grid output windows (default 2; use 8 on a GPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per batch (default infer.batch_size)")
    parser.add_argument("--repeats", type=int, default=3, help="process repeats (median reported)")
    parser.add_argument("--only", choices=("infer", "process"), default=None, help="run only one kind")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.only in (None, "infer"):
        for name, profile, overrides in SETTINGS:
            print(json.dumps(bench_infer(name, profile, overrides, device, args.grid, args.batch_size)), flush=True)
    if args.only in (None, "process"):
        print(json.dumps(bench_process(args.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
