"""Run a family's network over images and folders; read and write the raw prediction files.

``infer_image`` predicts one in-memory image (used by ``infer.py`` and by the training
engine's validation). ``run_folder`` predicts every image of a folder into one raw file per
image (``<stem>.npz``) or one ``raw.h5`` for the folder, resumably. ``find_raw`` and
``RawRef.load`` read those files back; ``process_folder`` (``process.py``) runs each file's
family post-processing on them, writes the output formats and optionally scores them.

Raw file layout (``.npz``; the same names as datasets/attributes of a group in ``.h5``):
every map the family's ``predict`` emits, as (H, W, C) float32 (``np_prob``, ``hv``,
``tp_prob``, ...), plus ``family`` (str), ``config`` (the resolved config as JSON text),
``mag`` (int magnification the image was taken at), ``source`` (the image path) and
``image`` ((H, W, 3) uint8, for overlays).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import glob
import json
import logging
import os
import shutil
import tempfile
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from misc.bn_adapt import adapted_batchnorm, check_adapt_weight
from misc.errors import UserError
from misc.io import IMAGE_EXTENSIONS, atomic_write, read_image
from misc.precision import autocast_dtype, channels_last_allowed
from postproc.formats import DEFAULT_FORMATS
from misc.tiling import ArraySink, Predictor, TileSpec, predict_tiled, window_count

log = logging.getLogger(__name__)

META_NAMES = ("family", "config", "mag", "source", "image")
H5_NAME = "raw.h5"
OUTPUT_FORMATS = ("npz", "h5")


def with_infer_overrides(family: Any, **overrides: Any) -> Any:
    """A shallow copy of ``family`` whose ``cfg['infer']`` has the non-None ``overrides`` set.

    The family reads its inference options (e.g. ``tta``) from ``self.cfg['infer']``; this is
    how a command-line flag overrides the YAML without touching the original family.
    """
    changes = {key: value for key, value in overrides.items() if value is not None}
    if not changes:
        return family
    clone = copy.copy(family)
    clone.cfg = {**family.cfg, "infer": {**family.cfg.get("infer", {}), **changes}}
    return clone


def family_predictor(family: Any, net: nn.Module, device: torch.device, amp_dtype: torch.dtype | None = None) -> Any:
    """Wrap ``family.predict`` as numpy (N, I, I, 3) uint8 → named (N, O, O, C) float32 maps.

    ``amp_dtype`` (e.g. ``torch.bfloat16``) runs the network under autocast; None: float32.
    """

    def predict(windows: np.ndarray) -> dict[str, np.ndarray]:
        batch = torch.from_numpy(np.ascontiguousarray(windows)).to(device).permute(0, 3, 1, 2).float().contiguous()
        autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
        with torch.inference_mode(), autocast:
            outputs = family.predict(net, batch)
        return {name: value.float().permute(0, 2, 3, 1).cpu().numpy() for name, value in outputs.items()}

    return predict


def inference_precision(family: Any, net: nn.Module, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``infer.amp`` on ``device`` (bf16 on a CPU with native bf16 or a
    GPU with bf16, fp16 on other GPUs; None: float32), see :func:`misc.precision.autocast_dtype`.
    With ``infer.channels_last`` the network moves to NHWC where oneDNN allows it."""
    infer_cfg = family.cfg["infer"]
    amp = bool(infer_cfg.get("amp", False))
    amp_dtype = autocast_dtype(device, amp, amp, "infer.amp")
    if channels_last_allowed(net, bool(infer_cfg.get("channels_last", False)), device, amp_dtype, "infer.channels_last"):
        net.to(memory_format=torch.channels_last)
    return amp_dtype


def _discard(row_start: int, row_stop: int, band: dict[str, np.ndarray]) -> None:
    """A band sink that keeps nothing (the BatchNorm adaptation pass)."""


def adapted_to_image(
    family: Any, net: nn.Module, image: np.ndarray, spec: TileSpec, device: str | torch.device, batch_size: int,
    amp_dtype: torch.dtype | None = None,
) -> contextlib.AbstractContextManager:
    """Context in which ``net``'s BatchNorm statistics are adapted to ``image`` (``infer.bn_adapt``).

    With ``infer.bn_adapt`` = w > 0 the image's windows (the same tiling, without TTA) run
    through the network once and each BatchNorm layer normalises with w x their statistics +
    (1 - w) x the trained ones (:mod:`misc.bn_adapt`); w = 0 (default): nothing changes.

    Args:
        image: (H, W, 3) uint8, after the family's ``preprocess_image``.
        spec: the window geometry of the prediction that follows.
    """
    weight = check_adapt_weight(family.cfg["infer"].get("bn_adapt") or 0.0)
    if weight == 0.0:
        return contextlib.nullcontext()
    observe = family_predictor(with_infer_overrides(family, tta=False), net, torch.device(device), amp_dtype)
    return adapted_batchnorm(net, weight, lambda: predict_tiled(image, observe, spec, _discard, batch_size))


@contextlib.contextmanager
def _eval_mode(net: nn.Module) -> Iterator[None]:
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


def infer_image(
    family: Any,
    net: nn.Module,
    image: np.ndarray,
    device: str | torch.device,
    batch_size: int | None = None,
    tta: bool | None = None,
    amp_dtype: torch.dtype | None = None,
    bn_adapt: float | None = None,
) -> dict[str, np.ndarray]:
    """Tiled prediction of one in-memory image.

    Args:
        family: the :class:`models.base.Family` instance (its ``cfg['infer']`` sets the window).
        net: its network, already on ``device``; it runs in eval mode and its mode is restored.
        image: (H, W, 3) uint8 RGB, before the family's ``preprocess_image``.
        device: the network's device.
        batch_size: windows per forward pass (``None``: ``infer.batch_size``).
        tta: test-time augmentation on/off (``None``: ``infer.tta`` of the config).
        amp_dtype: autocast dtype for the network (``None``: float32).
        bn_adapt: BatchNorm adaptation weight (``None``: ``infer.bn_adapt``; see
            :func:`adapted_to_image`).

    Returns:
        The family's named maps, each (H, W, C) float32.
    """
    family = with_infer_overrides(family, tta=tta, bn_adapt=bn_adapt)
    spec = TileSpec.from_config(family.cfg["infer"])
    batch_size = batch_size or family.cfg["infer"].get("batch_size", 8)
    sink = ArraySink(image.shape[0])
    image = family.preprocess_image(image)
    with _eval_mode(net), adapted_to_image(family, net, image, spec, device, batch_size, amp_dtype):
        predict_tiled(image, family_predictor(family, net, torch.device(device), amp_dtype), spec, sink,
                      batch_size=batch_size)
    return sink.maps


class NpyBandWriter:
    """Band sink writing each map to ``folder/<name>.npy`` sequentially (no memory mapping).

    Resident memory stays at one band: a memory-mapped buffer would count every touched
    page of the whole map in the process's resident set.
    """

    def __init__(self, folder: Path, height: int) -> None:
        self.folder = folder
        self.height = height
        self.files: dict[str, BinaryIO] = {}
        self.paths: dict[str, Path] = {}

    def __call__(self, row_start: int, row_stop: int, band: dict[str, np.ndarray]) -> None:
        for name, values in band.items():
            if name not in self.files:
                self.paths[name] = self.folder / f"{name}.npy"
                self.files[name] = open(self.paths[name], "wb")
                header = {
                    "descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                    "fortran_order": False,
                    "shape": (self.height, *values.shape[1:]),
                }
                np.lib.format.write_array_header_2_0(self.files[name], header)
            self.files[name].write(np.ascontiguousarray(values, dtype="<f4").data)

    def close(self) -> None:
        """Close every open map file."""
        for handle in self.files.values():
            handle.close()


class H5BandWriter:
    """Band sink writing each map into an (H, W, C) float32 dataset of an HDF5 group."""

    def __init__(self, group: Any, height: int) -> None:
        self.group = group
        self.height = height

    def __call__(self, row_start: int, row_stop: int, band: dict[str, np.ndarray]) -> None:
        for name, values in band.items():
            if name not in self.group:
                self.group.create_dataset(name, shape=(self.height, *values.shape[1:]), dtype="f4", chunks=True)
            self.group[name][row_start:row_stop] = values


def write_npz(handle: BinaryIO, map_files: dict[str, Path], arrays: dict[str, np.ndarray]) -> None:
    """Write an ``.npz`` (uncompressed zip of ``.npy``) streaming the map files from disk.

    Args:
        handle: a writable, seekable binary file.
        map_files: name → an ``.npy`` file copied in chunks (bounded memory).
        arrays: name → small in-memory arrays (no pickled objects).
    """
    with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, path in map_files.items():
            with open(path, "rb") as src, archive.open(f"{name}.npy", "w", force_zip64=True) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as dst:
                np.lib.format.write_array(dst, np.asanyarray(array), allow_pickle=False)


def _meta_arrays(family: Any, image: np.ndarray, source: Path, mag: int) -> dict[str, np.ndarray]:
    return {
        "family": np.array(family.name),
        "config": np.array(json.dumps(family.cfg)),
        "mag": np.array(int(mag)),
        "source": np.array(str(source)),
        "image": image,
    }


def _check_map_names(names: Iterable[str]) -> None:
    clash = sorted(set(names) & set(META_NAMES))
    if clash:
        raise UserError(f"the family's predict emits {clash}, names reserved for raw-file metadata {list(META_NAMES)}")


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


def _write_failure(path: Path, err: OSError) -> UserError:
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


def _infer_npz(predict: Predictor, image: np.ndarray, spec: TileSpec, batch_size: int, out_path: Path,
               meta: dict[str, np.ndarray]) -> None:
    """Predict ``image`` into band files in a buffer folder beside ``out_path``, then pack the ``.npz`` atomically."""
    _remove_leftovers(out_path.parent, out_path.stem)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.stem}.buffer-") as tmp:
        writer = NpyBandWriter(Path(tmp), image.shape[0])
        try:
            predict_tiled(image, predict, spec, writer, batch_size=batch_size)
        finally:
            writer.close()
        _check_map_names(writer.paths)
        with atomic_write(out_path, "wb") as handle:
            write_npz(handle, writer.paths, meta)


def _infer_h5(predict: Predictor, image: np.ndarray, spec: TileSpec, batch_size: int, h5file: Any, name: str,
              meta: dict[str, np.ndarray]) -> None:
    """Predict ``image`` into group ``name`` of ``h5file``; the group is marked complete last."""
    if name in h5file:
        del h5file[name]
    group = h5file.create_group(name)
    predict_tiled(image, predict, spec, H5BandWriter(group, image.shape[0]), batch_size=batch_size)
    _check_map_names(key for key in group)
    group.create_dataset("image", data=meta.pop("image"))
    for key, value in meta.items():
        group.attrs[key] = value.item()
    group.attrs["complete"] = True
    h5file.flush()


def _h5_complete(h5file: Any) -> set[str]:
    return {name for name, group in h5file.items() if group.attrs.get("complete", False)}


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
        family, net: as returned by ``misc.checkpoint.load_checkpoint``.
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
            finished = _h5_complete(h5file)
        else:
            finished = {p.stem for p in images if (output_dir / f"{p.stem}.npz").is_file()}
        report.skipped = [p for p in images if p.stem in finished]
        pending = [p for p in images if p.stem not in finished]
        if report.skipped:
            log.info("%d of %d images already done in %s; skipping them", len(report.skipped), len(images), output_dir)
        stack.enter_context(_eval_mode(net))
        bar = stack.enter_context(tqdm(total=len(pending), unit="image", disable=not show_progress))
        for path, image in _prefetch(pending, workers):
            if isinstance(image, UserError):
                log.warning("skipping unreadable image: %s", image)
                report.failed.append((path, str(image)))
                bar.update(1)
                continue
            bar.set_postfix_str(f"{path.name}: {window_count(image.shape[:2], spec)} windows")
            meta = _meta_arrays(family, image, path, infer_cfg.get("mag", 40))
            target = output_dir / (H5_NAME if output_format == "h5" else f"{path.stem}.npz")
            image = family.preprocess_image(image)
            try:
                with adapted_to_image(family, net, image, spec, device, infer_cfg["batch_size"], amp_dtype):
                    if output_format == "h5":
                        _infer_h5(predict, image, spec, infer_cfg["batch_size"], h5file, path.stem, meta)
                    else:
                        _infer_npz(predict, image, spec, infer_cfg["batch_size"], target, meta)
            except OSError as err:
                raise _write_failure(target, err) from None
            report.done.append(path)
            bar.update(1)
    return report


@dataclass
class RawPrediction:
    """One image's raw prediction as read back from a raw file.

    Attributes:
        name: the image stem.
        maps: the family's named (H, W, C) float32 maps.
        family: the family's registry name.
        config: the resolved configuration used for inference.
        mag: magnification the image was taken at.
        source: the image path at inference time.
        image: (H, W, 3) uint8 RGB.
    """

    name: str
    maps: dict[str, np.ndarray]
    family: str
    config: dict
    mag: int
    source: str
    image: np.ndarray


@dataclass(frozen=True)
class RawRef:
    """Where one raw prediction lives: an ``.npz`` file, or a group of an ``.h5`` file."""

    path: Path
    group: str | None = None

    @property
    def name(self) -> str:
        """The image stem."""
        return self.group if self.group is not None else self.path.stem

    def load(self) -> RawPrediction:
        """Read the prediction.

        Raises:
            UserError: the file is unreadable or lacks the metadata ``infer.py`` writes.
        """
        where = f"{self.path}:{self.group}" if self.group else str(self.path)
        try:
            if self.group is None:
                with np.load(self.path, allow_pickle=False) as data:
                    arrays = {key: data[key] for key in data.files}
                meta = {key: arrays.pop(key) for key in META_NAMES if key in arrays}
                meta = {key: (value if key == "image" else value.item()) for key, value in meta.items()}
            else:
                import h5py

                with h5py.File(self.path, "r") as h5file:
                    group = h5file[self.group]
                    arrays = {key: group[key][()] for key in group}
                    meta = {key: group.attrs[key] for key in group.attrs}
                    meta["image"] = arrays.pop("image", None)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            raise UserError(f"{where}: not a readable raw prediction file ({type(err).__name__}: {err})") from None
        missing = [key for key in META_NAMES if meta.get(key) is None]
        if missing:
            raise UserError(f"{where}: raw prediction lacks {missing}; write it with infer.py")
        return RawPrediction(
            name=self.name,
            maps={key: np.asarray(value, np.float32) for key, value in arrays.items()},
            family=str(meta["family"]),
            config=json.loads(str(meta["config"])),
            mag=int(meta["mag"]),
            source=str(meta["source"]),
            image=np.asarray(meta["image"], np.uint8),
        )


def find_raw(input_path: str | os.PathLike) -> list[RawRef]:
    """Raw predictions under ``input_path``: a folder of ``.npz`` (and/or ``raw.h5``) or one file.

    Only complete ``.h5`` groups are listed.

    Raises:
        UserError: nothing to read there.
    """
    input_path = Path(input_path)
    if input_path.is_dir():
        files = sorted(p for p in input_path.iterdir() if p.is_file() and p.suffix.lower() in (".npz", ".h5"))
    elif input_path.is_file():
        files = [input_path]
    else:
        raise UserError(f"{input_path}: no such folder or file")
    refs: list[RawRef] = []
    for path in files:
        if path.suffix.lower() == ".h5":
            import h5py

            try:
                with h5py.File(path, "r") as h5file:
                    refs.extend(RawRef(path, name) for name in sorted(_h5_complete(h5file)))
            except OSError as err:
                raise UserError(f"{path}: not a readable HDF5 file ({err})") from None
        elif path.suffix.lower() == ".npz":
            refs.append(RawRef(path))
    if not refs:
        raise UserError(f"{input_path}: no raw predictions (.npz or .h5 from infer.py) found")
    return refs


@dataclass
class ProcessReport:
    """Outcome of :func:`process_folder`: names done, failures, and metric files (with ``--gt``)."""

    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    metric_files: list[Path] = field(default_factory=list)


def process_raw(
    ref: RawRef,
    output_dir: Path,
    formats: tuple[str, ...],
    type_info: dict | None,
    keep_maps: bool,
) -> tuple[str, int, np.ndarray | None, np.ndarray | None]:
    """Post-process one raw prediction with its family's hook and write ``formats``.

    The family is rebuilt from the name and config stored in the raw file (plugin families
    through ``$HISTOSEG_PLUGINS``); the stored magnification is passed to ``postprocess`` as ``mag``.

    Returns:
        ``(name, mag, inst_map, type_map)``; the maps only when ``keep_maps`` (for scoring).
    """
    from models import get_family, load_plugins
    from postproc.formats import write_outputs

    load_plugins()  # families registered by $HISTOSEG_PLUGINS modules (processes start fresh)
    raw = ref.load()
    family = get_family(raw.family)(raw.config)
    result = family.postprocess(raw.maps, mag=raw.mag)
    write_outputs(output_dir, raw.name, result, raw.image, raw.mag, formats, type_info)
    if not keep_maps:
        return raw.name, raw.mag, None, None
    return raw.name, raw.mag, np.asarray(result["inst_map"]), result.get("type_map")


def _guarded(ref: RawRef, *args: Any) -> tuple[str, int, Any, Any] | tuple[str, UserError]:
    """:func:`process_raw` returning a per-image :class:`UserError` instead of raising it."""
    try:
        return process_raw(ref, *args)
    except UserError as err:
        return ref.name, err


def parse_gt(spec: str) -> tuple[str, str]:
    """Split ``KIND:ROOT`` (the root may itself hold ':')."""
    kind, sep, root = spec.partition(":")
    if not sep or not kind or not root:
        raise UserError(f"--gt '{spec}': expected KIND:ROOT, e.g. monuseg:/data/monuseg")
    return kind, root


def score_predictions(
    gt: str, predictions: dict[str, tuple[np.ndarray, np.ndarray | None]], output_dir: Path, mag: int
) -> list[Path]:
    """Score predicted maps against a dataset with the metrics library; print and write its table.

    Args:
        gt: ``KIND:ROOT`` for ``loader.read_dataset``; samples are paired by name with the
            predictions (unpaired ones are reported and left out).
        predictions: name → ((H, W) instance map, (H, W) type map or None).
        output_dir: receives ``metrics.csv`` and ``metrics.json``.
        mag: magnification; the centroid pairing radius is 12 px at 40x, scaled by mag / 40.

    Returns:
        The metric files written. Types are scored when every pair has true and predicted
        type maps (type ids 1..the largest one seen).
    """
    from loader import read_dataset
    from metrics import mean_rows
    from metrics.cli import LabelPair, print_table, score_pairs, write_results

    kind, root = parse_gt(gt)
    pairs = []
    for sample in read_dataset(kind, root):
        if sample.name not in predictions:
            continue
        pred_inst, pred_type = predictions[sample.name]
        if pred_inst.shape != sample.inst_map.shape:
            raise UserError(
                f"--gt {gt}: '{sample.name}' has shape {sample.inst_map.shape}, the prediction {pred_inst.shape}"
            )
        pairs.append(LabelPair(sample.name, sample.inst_map, pred_inst, sample.type_map, pred_type))
    unpaired = sorted(set(predictions) - {p.name for p in pairs})
    if unpaired:
        log.warning("no ground truth in %s for %d image(s): %s", gt, len(unpaired), unpaired[:5])
    if not pairs:
        raise UserError(f"--gt {gt}: no sample name matches a processed image (e.g. '{next(iter(predictions))}')")
    typed = all(p.true_type is not None and p.pred_type is not None for p in pairs)
    nr_types = max(max(int(p.true_type.max(initial=0)), int(p.pred_type.max(initial=0))) for p in pairs) if typed else None
    radius = 12.0 * mag / 40.0
    rows, pooled = score_pairs(pairs, nr_types or None, radius, None, False)
    means = mean_rows({k: v for k, v in row.items() if k != "name"} for row in rows)
    print_table(rows, means, pooled)
    csv_path = output_dir / "metrics.csv"
    options = {"gt": gt, "types": nr_types or None, "radius": radius, "unpaired": unpaired}
    json_path = write_results(csv_path, rows, means, pooled, options)
    return [csv_path, json_path]


def process_folder(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    formats: Iterable[str] = DEFAULT_FORMATS,
    gt: str | None = None,
    workers: int = 1,
    type_info: dict | None = None,
    show_progress: bool = True,
) -> ProcessReport:
    """Post-process every raw prediction under ``input_path`` and write the chosen formats.

    Args:
        input_path: folder of ``.npz`` / ``raw.h5`` from ``infer.py`` (or one such file).
        output_dir: receives ``<format>/<name>.<ext>`` and, with ``gt``, ``metrics.csv``/``.json``.
        formats: any of ``mat``, ``json``, ``geojson``, ``png``.
        gt: ``KIND:ROOT`` to score the results against (see :func:`score_predictions`).
        workers: images post-processed in parallel processes.
        type_info: ``{type: (name, (r, g, b))}`` for GeoJSON classes and overlay colours.
        show_progress: draw a progress bar.

    Returns:
        The :class:`ProcessReport`; unreadable raw files are listed in ``failed``.

    Raises:
        UserError: bad arguments, or an output that cannot be written (e.g. a full disk).
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from postproc.formats import FORMATS

    formats = tuple(formats)
    unknown = [fmt for fmt in formats if fmt not in FORMATS]
    if unknown or not formats:
        raise UserError(f"--formats {','.join(formats)}: choose one or more of {','.join(FORMATS)}")
    if gt is not None:
        parse_gt(gt)
    refs = find_raw(input_path)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    args = (output_dir, formats, type_info, gt is not None)
    report = ProcessReport()
    predictions: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    mags: set[int] = set()
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=len(refs), unit="image", disable=not show_progress))
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers))
            outcomes = (f.result() for f in as_completed([pool.submit(_guarded, ref, *args) for ref in refs]))
        else:
            outcomes = (_guarded(ref, *args) for ref in refs)
        try:
            for outcome in outcomes:
                bar.update(1)
                if isinstance(outcome[1], UserError):
                    log.warning("skipping %s: %s", outcome[0], outcome[1])
                    report.failed.append((outcome[0], str(outcome[1])))
                    continue
                name, mag, inst_map, type_map = outcome
                report.done.append(name)
                mags.add(mag)
                if inst_map is not None:
                    predictions[name] = (inst_map, type_map)
        except OSError as err:
            raise _write_failure(Path(err.filename or output_dir), err) from None
    report.done.sort()
    if gt is not None and predictions:
        if len(mags) > 1:
            log.warning("images were taken at several magnifications %s; the pairing radius uses %d", sorted(mags), max(mags))
        report.metric_files = score_predictions(gt, predictions, output_dir, max(mags))
    return report
