"""Predict every image of a folder into raw files, resumably: one ``<stem>.npz`` per image or
one ``raw.h5`` for the folder (layout in :mod:`inference.rawfile`)."""

from __future__ import annotations

import collections
import contextlib
import glob
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from inference.predict import (
    eval_mode, adapted_to_image, check_adapt_weight, family_predictor, inference_precision, stage_image,
    with_infer_overrides,
)
from inference.rawfile import (
    H5_NAME, OUTPUT_FORMATS, H5BandWriter, NpyBandWriter, check_map_names, complete_groups, meta_arrays, write_npz,
)
from inference.tiling import ArraySink, Predictor, TileSpec, predict_tiled, window_count
from misc.errors import UserError
from misc.io import IMAGE_EXTENSIONS, atomic_write, read_image

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """Outcome of :func:`run_folder`: image paths done, skipped (already done) and failed."""

    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def list_images(input_path: str | os.PathLike) -> list[Path]:
    """Image files of a folder (sorted, not recursive), or the single file given.

    Raises:
        UserError: no such path, no image in the folder, or two images sharing a stem.
    """
    input_path = Path(input_path)
    if input_path.is_file():
        return [input_path]
    if not input_path.is_dir():
        raise UserError(f"{input_path}: no such folder or file")
    images = sorted(p for p in input_path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise UserError(f"{input_path}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    stems = collections.Counter(p.stem for p in images)
    shared = sorted(stem for stem, n in stems.items() if n > 1)
    if shared:
        raise UserError(f"{input_path}: several images share the name(s) {shared}; outputs would collide")
    return images


def _read(path: Path) -> np.ndarray | UserError:
    try:
        return read_image(path)
    except UserError as err:
        return err


def _prefetch(paths: list[Path], workers: int) -> Iterator[tuple[Path, np.ndarray | UserError]]:
    """Yield ``(path, image or error)`` in order, reading up to ``workers`` images ahead."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: collections.deque[tuple[Path, Future]] = collections.deque()
        queue = iter(paths)
        for path in queue:
            pending.append((path, pool.submit(_read, path)))
            if len(pending) > max(1, workers):
                break
        while pending:
            path, future = pending.popleft()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_read, nxt)))
            yield path, future.result()


def write_failure(path: Path, err: OSError) -> UserError:
    """The one-line error of an output that could not be written (e.g. a full disk)."""
    reason = err.strerror or str(err)
    return UserError(
        f"{path}: cannot write ({reason}); no partial file was left under that name. "
        "Finished images are kept and skipped when the run is repeated"
    )


def _remove_leftovers(output_dir: Path, stem: str) -> None:
    """Delete the buffer folder and temporary file a killed run left for image ``stem``."""
    pattern = glob.escape(stem)
    for leftover in [*output_dir.glob(f".{pattern}.buffer-*"), *output_dir.glob(f".{pattern}.npz.*.tmp")]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _store_previous(writer: Any, previous: ArraySink | None) -> None:
    """Hand the earlier stages' maps of a staged family to ``writer`` (dense maps as one band)."""
    if previous is None:
        return
    dense = {name: values for name, values in previous.maps.items() if name not in previous.grids}
    if dense:
        writer(0, previous.height, dense)
    for name, geometry in previous.grids.items():
        writer.grid(name, previous.maps[name], geometry)


def _infer_npz(predict: Predictor, image: np.ndarray, spec: TileSpec, batch_size: int, out_path: Path,
               meta: dict[str, np.ndarray], previous: ArraySink | None = None) -> None:
    """Predict ``image`` into band files in a buffer folder beside ``out_path``, then pack the ``.npz`` atomically."""
    _remove_leftovers(out_path.parent, out_path.stem)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.stem}.buffer-") as tmp:
        writer = NpyBandWriter(Path(tmp), image.shape[0])
        try:
            predict_tiled(image, predict, spec, writer, batch_size=batch_size)
        finally:
            writer.close()
        earlier = NpyBandWriter(Path(tmp), meta["image"].shape[0])
        try:
            _store_previous(earlier, previous)
        finally:
            earlier.close()
        clash = sorted(set(earlier.paths) & set(writer.paths))
        if clash:
            raise UserError(f"stages of family '{meta['family'].item()}' emit the same map names {clash}; "
                            "each stage must name its maps differently")
        writer.paths.update(earlier.paths)
        writer.grids.update(earlier.grids)
        check_map_names(writer.paths)
        if writer.grids:
            meta["grids"] = np.array(json.dumps(writer.grids))
        with atomic_write(out_path, "wb") as handle:
            write_npz(handle, writer.paths, meta)


def _infer_h5(predict: Predictor, image: np.ndarray, spec: TileSpec, batch_size: int, h5file: Any, name: str,
              meta: dict[str, np.ndarray], previous: ArraySink | None = None) -> None:
    """Predict ``image`` into group ``name`` of ``h5file``; the group is marked complete last."""
    if name in h5file:
        del h5file[name]
    group = h5file.create_group(name)
    writer = H5BandWriter(group, image.shape[0])
    predict_tiled(image, predict, spec, writer, batch_size=batch_size)
    earlier = H5BandWriter(group, meta["image"].shape[0])
    _store_previous(earlier, previous)
    writer.grids.update(earlier.grids)
    check_map_names(key for key in group)
    if writer.grids:
        meta["grids"] = np.array(json.dumps(writer.grids))
    group.create_dataset("image", data=meta.pop("image"))
    for key, value in meta.items():
        group.attrs[key] = value.item()
    group.attrs["complete"] = True
    h5file.flush()


def run_folder(
    family: Any,
    net: nn.Module,
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    device: str | torch.device,
    batch_size: int | None = None,
    tta: bool | None = None,
    mag: int | None = None,
    workers: int = 1,
    output_format: str = "npz",
    show_progress: bool = True,
    bn_adapt: float | None = None,
    amp: bool | None = None,
) -> RunReport:
    """Predict every image of a folder into raw files, skipping images already done.

    Args:
        family, net: as returned by ``models.checkpoint.load_checkpoint``.
        input_path: a folder of images (or one image file).
        output_dir: receives ``<stem>.npz`` per image, or ``raw.h5`` with one group per image.
        device: the network's device.
        batch_size, tta, mag: override ``infer.batch_size``, ``infer.tta``, ``infer.mag``.
        workers: image-reading threads (images are read ahead while the network runs).
        output_format: ``'npz'`` or ``'h5'``.
        show_progress: draw a progress bar.
        bn_adapt: override ``infer.bn_adapt`` (BatchNorm statistics adapted to each image;
            see :func:`adapted_to_image`).
        amp: override ``infer.amp`` (the network under bf16/fp16 autocast, see
            :func:`inference_precision`; ``infer.channels_last`` also applies).

    Returns:
        The :class:`RunReport`; unreadable images are listed in ``failed``, not raised.

    Raises:
        UserError: bad arguments, or an output that cannot be written (e.g. a full disk).
    """
    if output_format not in OUTPUT_FORMATS:
        raise UserError(f"output format '{output_format}' is not one of {list(OUTPUT_FORMATS)}")
    family = with_infer_overrides(family, tta=tta, mag=mag, batch_size=batch_size, bn_adapt=bn_adapt, amp=amp)
    infer_cfg = family.cfg["infer"]
    spec = TileSpec.from_config(infer_cfg)
    check_adapt_weight(infer_cfg.get("bn_adapt") or 0.0)
    amp_dtype = inference_precision(family, net, torch.device(device))
    predict = family_predictor(family, net, torch.device(device), amp_dtype)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = RunReport()
    images = list_images(input_path)
    with contextlib.ExitStack() as stack:
        if output_format == "h5":
            import h5py

            h5file = stack.enter_context(h5py.File(output_dir / H5_NAME, "a"))
            finished = complete_groups(h5file)
        else:
            finished = {p.stem for p in images if (output_dir / f"{p.stem}.npz").is_file()}
        report.skipped = [p for p in images if p.stem in finished]
        pending = [p for p in images if p.stem not in finished]
        if report.skipped:
            log.info("%d of %d images already done in %s; skipping them", len(report.skipped), len(images), output_dir)
        stack.enter_context(eval_mode(net))
        bar = stack.enter_context(tqdm(total=len(pending), unit="image", disable=not show_progress))
        for path, image in _prefetch(pending, workers):
            if isinstance(image, UserError):
                log.warning("skipping unreadable image: %s", image)
                report.failed.append((path, str(image)))
                bar.update(1)
                continue
            bar.set_postfix_str(f"{path.name}: {window_count(image.shape[:2], spec)} windows")
            meta = meta_arrays(family, image, path, infer_cfg.get("mag", 40))
            target = output_dir / (H5_NAME if output_format == "h5" else f"{path.stem}.npz")
            image, previous = stage_image(family, image)
            try:
                with adapted_to_image(family, net, image, spec, device, infer_cfg["batch_size"], amp_dtype):
                    if output_format == "h5":
                        _infer_h5(predict, image, spec, infer_cfg["batch_size"], h5file, path.stem, meta, previous)
                    else:
                        _infer_npz(predict, image, spec, infer_cfg["batch_size"], target, meta, previous)
            except OSError as err:
                raise write_failure(target, err) from None
            report.done.append(path)
            bar.update(1)
    return report
