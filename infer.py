"""Predict raw maps for a folder of images with a trained checkpoint.

``python infer.py --model-path CKPT --input DIR --output DIR [--batch-size N] [--tta/--no-tta]
[--device D] [--mag 20|40] [--workers N] [--format npz|h5] [--bn-adapt W] [--amp/--no-amp]``

The checkpoint carries the family, its resolved config and the weights; this script only
overrides the options given. Exit code 0 when every image was predicted (or already done),
1 when some images could not be read (they are listed), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from config import add_logging_arguments, setup_logging
from engine.distributed import resolve_device
from inference.folder import run_folder
from inference.predict import chain_stages
from inference.rawfile import OUTPUT_FORMATS
from misc.errors import UserError, cli_main
from models.checkpoint import load_checkpoint

log = logging.getLogger("infer")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check the command line."""
    parser = argparse.ArgumentParser(prog="python infer.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True, help="checkpoint file (best.pt/latest.pt from train.py)")
    parser.add_argument("--input", required=True, help="folder of images (png, jpg, tif, bmp), or one image")
    parser.add_argument("--output", required=True, help="folder for the raw predictions")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per forward pass (default infer.batch_size)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="test-time augmentation (default infer.tta of the checkpoint's config)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--mag", type=int, default=None,
                        help="magnification of the images, e.g. 20 or 40 (default infer.mag); used by post-processing")
    parser.add_argument("--bn-adapt", type=float, default=None, metavar="W",
                        help="adapt BatchNorm statistics to each image: W x the image's + (1 - W) x the trained "
                             "(0 = off, 1 = the image's only; default infer.bn_adapt)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="run the network under bf16 autocast (fp16 on GPUs without bf16; on a CPU only with "
                             "native bf16); default infer.amp of the checkpoint's config (infer.channels_last "
                             "applies either way)")
    parser.add_argument("--workers", type=int, default=2, help="image-reading threads (default 2)")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="npz",
                        help="one .npz per image (default) or one raw.h5 for the folder")
    add_logging_arguments(parser)
    args = parser.parse_args(argv)
    for name in ("batch_size", "mag", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """Run inference over the input folder; returns the exit code."""
    args = parse_args(argv)
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    device = resolve_device(args.device)
    family, net, meta = load_checkpoint(args.model_path, device)
    family = chain_stages(family, meta, device)
    report = run_folder(
        family, net, args.input, args.output, device,
        batch_size=args.batch_size, tta=args.tta, mag=args.mag, workers=args.workers,
        output_format=args.format, show_progress=not args.quiet, bn_adapt=args.bn_adapt, amp=args.amp,
    )
    log.info("%d predicted, %d already done, %d unreadable; outputs in %s",
             len(report.done), len(report.skipped), len(report.failed), args.output)
    for path, reason in report.failed:
        log.error("not predicted: %s", reason)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
