"""Predict with a trained checkpoint: raw maps for a folder of image tiles, or nuclei and class maps for whole slides.

``python infer.py --model-path CKPT [CKPT ...] --input DIR_OR_FILE --output DIR [--batch-size N]
[--tta/--no-tta] [--device D] [--mag 20|40] [--workers N] [--format npz|h5] [--bn-adapt W]
[--amp/--no-amp] [--slide-mpp MPP] [--mask FILE] [--type-info FILE]``

The checkpoint carries the family, its resolved config and the weights; this script only
overrides the options given. Several checkpoints form an ensemble on image folders: their maps
are averaged (:mod:`inference.ensemble`; the first one's family post-processes them). When the
input is a slide (``.svs``, ``.ndpi``, ``.mrxs``, ``.scn``, pyramidal or OME-TIFF) or a folder
holding slides, each slide runs end to end (see ``inference/slide.py``: ``OUT/<stem>/`` gets
GeoJSON, SQLite, HoVer-Net JSON, overlay TIFF, thumbnail and summary; a semantic family its
class-map TIFF, GeoJSON annotations and areas; a family that infers slides itself, such as
h2gnet, the same class-map files, its pictures, a raw file for ``process.py`` and a summary,
see ``inference/slide_family.py``); under ``torchrun
--nproc_per_node N`` the slides are shared among the processes. Otherwise every image is
predicted into a raw file for ``process.py``. Exit code 0 when every image/slide was done (or
already done), 1 when some images could not be read (they are listed), 2 on a usage error
(also: not a slide, a slide without pixel size).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from config import add_logging_arguments, setup_logging
from engine.distributed import resolve_device
from inference.ensemble import Member, run_ensemble_folder
from inference.folder import run_folder
from inference.predict import chain_stages
from inference.rawfile import OUTPUT_FORMATS
from misc.errors import UserError, cli_main
from misc.io import IMAGE_EXTENSIONS
from models.checkpoint import load_checkpoint

log = logging.getLogger("infer")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check the command line."""
    parser = argparse.ArgumentParser(prog="python infer.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True, nargs="+",
                        help="checkpoint file (best.pt/latest.pt from train.py); several: an ensemble averaging "
                             "their maps (image folders only; families emitting the same maps, .npz output)")
    parser.add_argument("--input", required=True,
                        help="folder of images (png, jpg, tif, bmp) or of slides, or one image or slide")
    parser.add_argument("--output", required=True, help="folder for the raw predictions or the slides' outputs")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per forward pass (default infer.batch_size)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="test-time augmentation (default infer.tta of the checkpoint's config)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--mag", type=int, default=None,
                        help="magnification of the images, e.g. 20 or 40 (default infer.mag); used by post-processing")
    parser.add_argument("--bn-adapt", type=float, default=None, metavar="W",
                        help="adapt BatchNorm statistics to each image (a slide: a sample of its tissue windows): "
                             "W x the image's + (1 - W) x the trained (0 = off, 1 = the image's only; "
                             "default infer.bn_adapt)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="run the network under bf16 autocast (fp16 on GPUs without bf16; on a CPU only with "
                             "native bf16); default infer.amp of the checkpoint's config (infer.channels_last "
                             "applies either way)")
    parser.add_argument("--workers", type=int, default=2, help="image- or region-reading threads (default 2)")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="npz",
                        help="images: one .npz per image (default) or one raw.h5 for the folder")
    parser.add_argument("--slide-mpp", type=float, default=None, metavar="MPP",
                        help="slides: micrometres per level-0 pixel, for slides whose metadata lacks it "
                             "(overrides the metadata when given)")
    parser.add_argument("--mask", default=None,
                        help="slides: tissue-mask image covering the slide (non-zero = tissue) instead of detection")
    parser.add_argument("--tile", type=int, default=1024,
                        help="slides: post-processing tile side at the network's resolution (default 1024)")
    parser.add_argument("--postproc-workers", type=int, default=1,
                        help="slides: tiles post-processed at once, alongside the network (default 1)")
    parser.add_argument("--type-info", default=None,
                        help="slides: HoVer-Net type_info.json naming and colouring the types")
    add_logging_arguments(parser)
    args = parser.parse_args(argv)
    for name in ("batch_size", "mag", "workers", "postproc_workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.slide_mpp is not None and not args.slide_mpp > 0:
        raise UserError(f"--slide-mpp must be > 0 micrometres per pixel, got {args.slide_mpp}")
    if len(args.model_path) > 1 and args.format != "npz":
        raise UserError(f"--format {args.format}: an ensemble of {len(args.model_path)} checkpoints writes npz files")
    return args


def run_on_slides(args: argparse.Namespace, slides: list) -> int:
    """Run every slide of this process's share; returns the exit code."""
    from inference.predict import with_infer_overrides
    from inference.slide import SlideOptions, run_slides, shard
    from loader.slide import open_slide
    from postproc.formats import load_type_info

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    mine = shard(slides, rank, world)
    for path in mine:  # every slide opens and has a pixel size before any work starts
        open_slide(path, args.slide_mpp).close()
    if args.mask is not None and len(slides) > 1:
        raise UserError("--mask covers one slide; give one slide as --input with it")
    if len(args.model_path) > 1:
        raise UserError(f"--model-path: an ensemble of {len(args.model_path)} checkpoints runs on image folders, "
                        "not on slides; give one checkpoint")
    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    family, net, _ = load_checkpoint(args.model_path[0], device)
    family = with_infer_overrides(family, tta=args.tta, batch_size=args.batch_size, amp=args.amp,
                                  bn_adapt=args.bn_adapt)
    options = SlideOptions(
        slide_mpp=args.slide_mpp, mask=args.mask, batch_size=args.batch_size, tile=args.tile,
        readers=args.workers, postproc_workers=args.postproc_workers, show_progress=not args.quiet,
        type_info=load_type_info(args.type_info) if args.type_info else None,
    )
    if world > 1:
        log.info("rank %d of %d: %d of %d slides", rank, world, len(mine), len(slides))
    results = run_slides(family, net, mine, args.output, device, options)
    log.info("%d slides done, %d already done; outputs in %s",
             sum(not r.skipped for r in results), sum(r.skipped for r in results), args.output)
    return 0


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """Run inference over the input images or slides; returns the exit code."""
    from loader.slide import list_slides

    args = parse_args(argv)
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    slides = list_slides(args.input)
    if slides:
        others = [p for p in Path(args.input).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and p not in slides] if Path(args.input).is_dir() else []
        if others:
            log.warning("%s holds slides and %d other images; only the slides run (give the images a folder of "
                        "their own)", args.input, len(others))
        return run_on_slides(args, slides)
    device = resolve_device(args.device)
    if len(args.model_path) > 1:
        members = [Member(path, *load_checkpoint(path, device)[:2]) for path in args.model_path]
        report = run_ensemble_folder(
            members, args.input, args.output, device, show_progress=not args.quiet,
            batch_size=args.batch_size, tta=args.tta, mag=args.mag, bn_adapt=args.bn_adapt, amp=args.amp,
        )
    else:
        family, net, meta = load_checkpoint(args.model_path[0], device)
        if family.slides_only:
            raise UserError(f"{args.input}: no slide found; family '{family.name}' infers whole slides only "
                            "(anything OpenSlide opens, pyramidal or OME-TIFF), not image tiles")
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
