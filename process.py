"""Turn raw predictions from infer.py into results, their files (by task) and metrics.

``python process.py --input RAWDIR --output DIR [--formats F1,F2] [--gt GT] [--workers N]
[--type-info FILE] [--mpp UM] [--count-crop N] [--set postproc.KEY=VALUE ...]
[--sweep postproc.KEY=V1,V2,... --sweep-score SCORE]``

Each raw file names its family and config, so no model is needed: the family's own
post-processing runs on it and its task decides the outputs (docs/tasks.md): instance results
as ``mat,json,geojson,png`` (and ``tif``), semantic ones as ``label,overlay,geojson,areas``,
patch ones as ``csv``. Per-image files go to ``DIR/<format>/<image>.<ext>``, tables to
``DIR/areas.csv`` / ``DIR/predictions.csv``; typed instance results also give
``DIR/composition.csv`` (nuclei per type per image, in the central ``--count-crop`` square when
given); with ``--gt`` the metrics (typed: mPQ+ and the R² of the counts too) are printed and
written to ``DIR/metrics.csv`` and ``DIR/metrics.json`` (images the ground truth does not
list are processed, listed and left out of the scores; a ground truth that matches no image or
one of another shape stops the run). A semantic result with named stages (e.g. HistoSegNet's
Grad-CAM, adjusted, CRF) also gets each earlier stage's files in ``DIR/<format>_<stage>/`` and
its scores as ``<stage>:<score>`` columns.
``--set postproc.KEY=VALUE`` changes a post-processing option the raw files' config holds (no
re-inference); ``--sweep postproc.KEY=V1,V2,...`` with ``--gt`` scores every value (each in
``DIR/sweep/KEY=VALUE/``, the table in ``DIR/sweep.csv`` and ``sweep.json``) and writes the best
value's results to ``DIR`` (``inference.sweep``).
Exit code 0 on success, 1 when some raw files could not be read (listed), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from config import add_logging_arguments, setup_logging
from misc.errors import UserError, cli_main
from inference.processing import process_folder
from inference.sweep import DEFAULT_SCORES, parse_sweep, run_sweep
from models.tasks import TASK_KINDS
from postproc.formats import load_type_info

log = logging.getLogger("process")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check the command line."""
    parser = argparse.ArgumentParser(prog="python process.py", description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="folder of .npz / raw.h5 written by infer.py (or one file)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--formats", default=None,
                        help="comma-separated formats of the results' task: instance "
                             f"{','.join(TASK_KINDS['instance'].formats)} (tif = 16-bit label map), semantic "
                             f"{','.join(TASK_KINDS['semantic'].formats)}, patch {','.join(TASK_KINDS['patch'].formats)} "
                             "(default: all but tif)")
    parser.add_argument("--gt", default=None, metavar="GT",
                        help="score against: KIND:ROOT, a dataset read by loader.read_dataset (instance, semantic); "
                             "a folder of class-map images (semantic); a CSV of image labels (patch); what a family "
                             "that scores its results itself reads (h2gnet: a cohort.json or a folder of slide "
                             "annotations or masks)")
    parser.add_argument("--mpp", type=float, default=None,
                        help="pixel size in micrometres for areas in mm2 (default infer.mpp of the raw files' config)")
    parser.add_argument("--workers", type=int, default=1, help="images post-processed in parallel (default 1)")
    parser.add_argument("--type-info", default=None,
                        help="class-info file in the type_info.json layout naming and colouring the types or classes "
                             "(e.g. opt/hovernet_type_info/consep.json; default: the family's)")
    parser.add_argument("--count-crop", type=int, default=None, metavar="N",
                        help="count nuclei per type in the central N x N pixels only (CoNIC: 224 of each 256 "
                             "patch) for composition.csv and the R² of --gt; default: the whole image")
    parser.add_argument("--set", dest="postproc", action="append", default=[], metavar="postproc.KEY=VALUE",
                        help="override a post-processing option of the raw files' config, value parsed as YAML "
                             "(repeatable), e.g. --set postproc.h=10")
    parser.add_argument("--sweep", default=None, metavar="postproc.KEY=V1,V2,...",
                        help="with --gt: process and score once per value, then write the best value's results")
    parser.add_argument("--sweep-score", default=None, metavar="SCORE",
                        help="dotted path into metrics.json of the score the sweep maximises (default: instance "
                             f"{DEFAULT_SCORES['instance']}, semantic {DEFAULT_SCORES['semantic']}, "
                             f"patch {DEFAULT_SCORES['patch']})")
    add_logging_arguments(parser)
    args = parser.parse_args(argv)
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.count_crop is not None and args.count_crop < 1:
        raise UserError(f"--count-crop must be >= 1 pixel, got {args.count_crop}")
    if args.formats is not None:
        args.formats = tuple(fmt.strip() for fmt in args.formats.split(",") if fmt.strip())
    if args.mpp is not None and args.mpp <= 0:
        raise UserError(f"--mpp must be a positive pixel size in micrometres, got {args.mpp}")
    if (args.sweep or args.sweep_score) and args.gt is None:
        raise UserError("--sweep and --sweep-score score against --gt; give --gt")
    if args.sweep_score and not args.sweep:
        raise UserError("--sweep-score names the score of a --sweep; give --sweep")
    args.sweep = parse_sweep(args.sweep) if args.sweep else None
    if args.sweep is not None and any(text.partition("=")[0] == args.sweep.key for text in args.postproc):
        raise UserError(f"--set {args.sweep.key}: that key is the one --sweep chooses; drop one of them")
    return args


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """Post-process every raw file; returns the exit code."""
    args = parse_args(argv)
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    type_info = load_type_info(args.type_info) if args.type_info else None
    options = dict(formats=args.formats, workers=args.workers, type_info=type_info, show_progress=not args.quiet,
                   count_crop=args.count_crop, mpp=args.mpp)
    if args.sweep is not None:
        report = run_sweep(args.input, args.output, args.sweep, args.gt, args.sweep_score, args.postproc,
                           **options).report
    else:
        report = process_folder(args.input, args.output, gt=args.gt, postproc=args.postproc, **options)
    log.info("%d processed, %d unreadable; outputs in %s", len(report.done), len(report.failed), args.output)
    if report.composition_file is not None:
        log.info("wrote %s", report.composition_file)
    for path in report.metric_files:
        log.info("wrote %s", path)
    for name, reason in report.failed:
        log.error("not processed: %s", reason)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
