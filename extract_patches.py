"""Cut a dataset into HoVer-Net-style training patches (``.npy`` per patch or one ``.h5`` per split).

Example::

    python extract_patches.py monuseg ../shared/data/monuseg OUT --win 540 --step 164
    python extract_patches.py consep_mat DATA/consep OUT --win 540 --step 164 --split train test --format h5
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import yaml

from loader.extract import FORMATS, MODES, ExtractOptions, extract_dataset, group_name
from misc.errors import UserError, cli_main


def _size(values: list[int], flag: str) -> tuple[int, int]:
    if len(values) not in (1, 2) or min(values) <= 0:
        raise UserError(f"{flag} {values}: expected one or two positive sizes in pixels (H [W])")
    return (values[0], values[-1])


def _reader_options(pairs: list[str]) -> tuple[tuple[str, Any], ...]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--reader-option '{pair}': expected KEY=VALUE (VALUE parsed as YAML)")
        options[key] = yaml.safe_load(value)
    return tuple(sorted(options.items()))


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``extract_patches.py``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", help="dataset reader kind (monuseg, consep_mat, cpm15, folder, ...)")
    parser.add_argument("root", type=Path, help="dataset folder")
    parser.add_argument("out", type=Path, help="output folder (manifest.json + patches)")
    parser.add_argument("--win", type=int, nargs="+", default=[540], help="window size H [W] in pixels (default 540)")
    parser.add_argument("--step", type=int, nargs="+", default=[164], help="step H [W] in pixels (default 164)")
    parser.add_argument("--mode", choices=MODES, default="mirror", help="mirror: reflect-pad by (win-step)/2 (default)")
    parser.add_argument("--split", nargs="+", default=None, help="split(s) to extract, each to its own group")
    parser.add_argument("--format", choices=FORMATS, default="npy", help="npy per patch or one gzip HDF5 per split")
    parser.add_argument("--compression", type=int, default=4, help="gzip level 0-9 for --format h5 (default 4)")
    parser.add_argument("--reader-option", action="append", default=[], metavar="KEY=VALUE",
                        help="option for the dataset reader, e.g. class_map=merge.yaml (repeatable)")
    parser.add_argument("--limit", type=int, default=None, help="extract only the first N images of each split")
    parser.add_argument("--overwrite", action="store_true", help="replace patches made with other options")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run :func:`loader.extract.extract_dataset`."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.limit is not None and args.limit <= 0:
        raise UserError(f"--limit {args.limit}: expected a positive number of images")
    options = ExtractOptions(
        win=_size(args.win, "--win"),
        step=_size(args.step, "--step"),
        mode=args.mode,
        fmt=args.format,
        kind=args.kind,
        root=str(args.root.resolve()),
        reader_options=_reader_options(args.reader_option),
        compression=args.compression,
    )
    splits = args.split or [None]
    manifest = extract_dataset(args.kind, args.root, args.out, options, splits, limit=args.limit, overwrite=args.overwrite, progress=not args.no_progress)
    for group in (group_name(s) for s in splits):
        entries = manifest["groups"][group]
        where = args.out / (f"{group}.h5" if args.format == "h5" else group)
        print(f"{group}: {len(entries)} images, {sum(len(e['patches']) for e in entries)} patches in {where}")
    return 0


if __name__ == "__main__":
    main()
