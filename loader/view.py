"""Check augmentations by eye: a PNG grid of samples and augmented copies with label overlays.

Each row is one sample: the original first, then ``repeats`` augmented copies (item seeds
``[seed, 0, index]`` then ``[seed, r, index]`` for r = 1..), with instance outlines drawn in
the colour of their type (yellow when untyped)::

    python -m loader.view OUT/all grid.png --preset hovernet --input-shape 270 270
    python -m loader.view ../shared/data/monuseg grid.png --kind monuseg --preset fullnet
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from skimage.segmentation import find_boundaries

from misc.errors import UserError, cli_main

#: Outline colour of type ids 1..10 (RGB); type 0 / untyped instances are yellow.
TYPE_COLOURS = np.array([
    [255, 255, 0], [0, 200, 0], [230, 0, 0], [0, 90, 255], [255, 128, 0], [160, 0, 255],
    [0, 220, 220], [255, 0, 160], [128, 128, 0], [0, 128, 128], [255, 255, 255],
], dtype=np.uint8)


def overlay_labels(image: np.ndarray, inst_map: np.ndarray | None, type_map: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 copy of ``image`` with the inner boundary of each instance coloured
    by its type (``TYPE_COLOURS[type % 11]``)."""
    out = image.copy()
    if inst_map is None:
        return out
    edges = find_boundaries(inst_map, mode="inner") & (inst_map > 0)
    types = type_map[edges] if type_map is not None else np.zeros(int(edges.sum()), dtype=np.int64)
    out[edges] = TYPE_COLOURS[types % len(TYPE_COLOURS)]
    return out


def _tile(sample: dict[str, Any], size: int) -> np.ndarray:
    """Overlay of one sample resized to ``size x size`` (aspect kept, black margins)."""
    picture = overlay_labels(sample["image"], sample.get("inst_map"), sample.get("type_map"))
    height, width = picture.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    picture = cv2.resize(picture, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
    canvas = np.zeros((size, size, 3), np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = picture
    return canvas


def augment_grid(dataset: Any, indices: Sequence[int], repeats: int = 4, tile: int = 256, gap: int = 4) -> np.ndarray:
    """Grid image: one row per index, the un-augmented sample then ``repeats`` augmented ones.

    Args:
        dataset: a :class:`loader.datasets.SampleDataset` without target builder; its epoch is
            set to 1..``repeats`` for the augmented copies (and left at the last one).
        tile: side of each cell in pixels; ``gap``: white pixels between cells.

    Returns:
        (rows * (tile + gap) - gap, (repeats + 1) * (tile + gap) - gap, 3) uint8.
    """
    rows = []
    for index in indices:
        cells = [_tile(dataset.load(index), tile)]
        for repeat in range(1, repeats + 1):
            dataset.set_epoch(repeat)
            cells.append(_tile(dataset[index], tile))
        rows.append(_join(cells, gap, axis=1))
    return _join(rows, gap, axis=0)


def _join(arrays: list[np.ndarray], gap: int, axis: int) -> np.ndarray:
    shape = list(arrays[0].shape)
    shape[axis] = gap
    spacer = np.full(shape, 255, np.uint8)
    parts = [part for array in arrays for part in (array, spacer)][:-1]
    return np.concatenate(parts, axis=axis)


def _open_source(path: Path, kind: str | None, split: str | None) -> Sequence[Any]:
    if kind is None:
        from loader.datasets import open_patches

        return open_patches(path, split)
    from loader.readers import read_dataset

    return read_dataset(kind, path, split=split)


def _augment(preset: str, input_shape: list[int] | None) -> Callable[..., dict]:
    from loader.augment import build_augment, load_augment_preset

    return build_augment(load_augment_preset(preset), input_shape=input_shape)


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Write the grid PNG for a patch folder / .h5 file or a dataset read with ``--kind``."""
    from loader.datasets import SampleDataset
    from misc.io import write_image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="extract OUT folder, OUT/<split>, .h5 file, or dataset root with --kind")
    parser.add_argument("out", type=Path, help="PNG file to write")
    parser.add_argument("--kind", default=None, help="read SOURCE with this dataset reader instead of as patches")
    parser.add_argument("--split", default=None, help="split of SOURCE")
    parser.add_argument("--preset", default="hovernet", help="augmentation set in opt/augment.yaml (default hovernet)")
    parser.add_argument("--input-shape", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="network input shape for 'crop: input' entries (e.g. 270 270)")
    parser.add_argument("--samples", type=int, default=4, help="rows: samples shown (default 4)")
    parser.add_argument("--repeats", type=int, default=4, help="augmented copies per sample (default 4)")
    parser.add_argument("--tile", type=int, default=256, help="cell size in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed; also picks the samples shown")
    args = parser.parse_args(argv)
    if min(args.samples, args.repeats, args.tile) <= 0:
        raise UserError("--samples, --repeats and --tile must be positive")
    source = _open_source(args.source, args.kind, args.split)
    if len(source) == 0:
        raise UserError(f"{args.source}: holds no samples")
    dataset = SampleDataset(source, augment=_augment(args.preset, args.input_shape), seed=args.seed)
    rng = np.random.default_rng(args.seed)
    indices = sorted(rng.choice(len(source), size=min(args.samples, len(source)), replace=False).tolist())
    write_image(args.out, augment_grid(dataset, indices, args.repeats, args.tile))
    print(f"wrote {args.out}: {len(indices)} samples x {args.repeats} augmentations ({args.preset})")
    return 0


if __name__ == "__main__":
    main()
