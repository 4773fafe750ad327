"""Train any registered model family.

    python train.py --model hovernet --data synthetic --profile demo
    python train.py --model hovernet --data consep_mat:/data/consep --out runs/consep
    python train.py --model hovernet --out runs/consep --resume
    python train.py --model h2gnet --data synthetic --out runs/h2g --stage refine
    python train.py --model fullnet --data monuseg:/data/monuseg --anchor /data/anchor.tif
    torchrun --nproc_per_node 2 train.py --model hovernet --data consep_mat:/data/consep

The loop itself lives in :mod:`engine` (:mod:`engine.run`, :mod:`engine.loop`); this script only parses arguments.
"""

from __future__ import annotations

import argparse
import json

from config import add_config_arguments, add_logging_arguments
from engine.distributed import DEVICE_CHOICES
from engine.run import RunRequest, run
from misc.errors import cli_main


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``train.py``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="registered family name, e.g. hovernet")
    parser.add_argument(
        "--data", default=None,
        help="'synthetic', KIND:ROOT (a loader.read_dataset kind and folder) or a patch folder/.h5 "
        "from extract_patches.py; default: data.source of the config",
    )
    add_config_arguments(parser)
    parser.add_argument("--out", default=None, help="run folder (default runs/<family>-<UTC time>)")
    parser.add_argument(
        "--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
        help="continue from CHECKPOINT, or from <--out>/checkpoints/latest.pt when no path is given",
    )
    parser.add_argument(
        "--anchor", default=None, metavar="IMAGE",
        help="colour-normalisation anchor image whose statistics become the target (families with "
        "model.reinhard_anchor: hovernet, fullnet; same as --set model.reinhard_anchor=IMAGE)",
    )
    parser.add_argument("--stage", default=None, metavar="NAME",
                        help="staged families: train only stage NAME (earlier stages must be trained; default: all in order)")
    parser.add_argument("--summary", action="store_true", help="print the network's layer table (each stage's) and exit")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="auto picks CUDA when present")
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--plugin", dest="plugins", action="append", default=[], metavar="MODULE",
        help="import MODULE first so that it can register families (repeatable; also $HISTOSEG_PLUGINS)",
    )
    add_logging_arguments(parser)
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Parse arguments and train."""
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides or [])
    if args.anchor is not None:
        overrides.append(f"model.reinhard_anchor={json.dumps(args.anchor)}")
    run(RunRequest(
        model=args.model, data=args.data, profile=args.profile, config=args.config, overrides=overrides,
        out=args.out, resume=args.resume, summary=args.summary, device=args.device, num_threads=args.num_threads,
        quiet=args.quiet, verbose=args.verbose, plugins=args.plugins, stage=args.stage,
    ))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
