"""Training throughput: optimiser steps per second through the real training path.

Each setting runs ``train.py``'s engine for one short epoch on synthetic tiles generated on
the fly (reading, augmentation, targets, forward, loss, backward, optimiser step) and prints
one JSON line with the steps, their wall time and steps per second (the first step, with its
warm-up, included; with ``--warmup`` a first, untimed epoch of the same steps warms up cuDNN,
the allocator and the loader, and only the second epoch is timed). Settings: the ``cpu``
profiles of HoVer-Net and FullNet and, with ``--all`` (for a GPU: minutes per step on a 2-core
CPU), HoVer-Net ``original`` and ``fast`` at published width (first published phase: frozen
encoder, batch 8) and FullNet ``paper``.

    OMP_NUM_THREADS=2 python benchmarks/bench_train.py [--device auto] [--steps 4] [--warmup]
        [--all | --only hovernet:cpu] [--set train.amp_cpu=false ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import load_config  # noqa: E402
from engine.distributed import resolve_device  # noqa: E402
from engine.run import RunRequest, run# noqa: E402
from misc.errors import UserError, cli_main  # noqa: E402

#: (family, setting name, profile, overrides); ``--all`` adds the published widths (GPU scale).
SETTINGS = (
    ("hovernet", "cpu", "cpu", []),
    ("fullnet", "cpu", "cpu", []),
)
SLOW = (
    ("hovernet", "original", "paper", ["model.pretrained=null"]),
    ("hovernet", "fast", "paper", ["model.pretrained=null", "model.mode=fast", "infer.input_size=256",
                                   "infer.output_size=164"]),
    ("fullnet", "paper", "paper", []),
)


def bench_train(
    family: str, name: str, profile: str, overrides: list[str], steps: int, device: str, warmup: bool = False
) -> dict:
    """Steps per second of ``steps`` optimiser steps of one epoch of the profile's first phase
    on synthetic tiles (the second of two such epochs with ``warmup``)."""
    cfg = load_config(family, profile, overrides=overrides)
    phase = {**cfg["train"]["phases"][0], "epochs": 2 if warmup else 1}
    batch = int(phase["batch_size"]) * int(cfg["train"].get("accumulate", 1))
    settings = [
        *overrides, f"data.synthetic.n_train={steps * batch}", "data.synthetic.n_val=0",
        "train.val_every=1000", "train.log_every=1000", f"train.phases=[{json.dumps(phase)}]",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        run(RunRequest(model=family, data="synthetic", profile=profile, overrides=settings, out=f"{tmp}/run",
                       device=device, quiet=True))
        with open(f"{tmp}/run/metrics.csv") as handle:
            rows = list(csv.DictReader(handle))
    timed = int(rows[-1]["step"]) - (int(rows[-2]["step"]) if warmup else 0)
    seconds = float(rows[-1]["train_seconds"])
    return {
        "bench": "train", "family": family, "setting": name, "profile": profile, "batch_size": int(phase["batch_size"]),
        "input": cfg["infer"]["input_size"], "steps": timed, "warmup": warmup, "seconds": round(seconds, 2),
        "steps_per_s": round(timed / seconds, 3), "device": str(resolve_device(device)), "threads": torch.get_num_threads(),
    }


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Run the settings and print their JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per setting (default 4)")
    parser.add_argument("--warmup", action="store_true", help="time a second epoch after an untimed first one")
    parser.add_argument("--all", action="store_true", help="also the published widths (slow on CPU)")
    parser.add_argument("--only", default=None, metavar="FAMILY:SETTING", help="run one setting, e.g. hovernet:cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override added to every setting, e.g. train.amp_cpu=false (repeatable)")
    args = parser.parse_args(argv)
    chosen = [s for s in SETTINGS + SLOW if args.only == f"{s[0]}:{s[1]}"] if args.only else SETTINGS + (SLOW if args.all else ())
    if not chosen:
        raise UserError(f"--only {args.only}: no such setting (have {[f'{s[0]}:{s[1]}' for s in SETTINGS + SLOW]})")
    for family, name, profile, overrides in chosen:
        settings = [*overrides, *args.overrides]
        print(json.dumps({**bench_train(family, name, profile, settings, args.steps, args.device, args.warmup),
                          "overrides": args.overrides}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
