"""Training datasets: patch sources (extract output folders, HDF5 files) and a PyTorch
``Dataset`` that augments each sample and hands it to a model family's target builder.

The loader does not know any family's targets: ``target_builder(sample) -> dict`` decides
them. Randomness is per item, ``numpy.random.default_rng([seed, epoch, index])``, so a
``DataLoader`` gives the same items for any number of workers, across runs and on resume.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from loader.extract import MANIFEST_NAME, load_manifest, resolve_group
from loader.keys import LABEL_MAPS, SAMPLE_KEYS
from misc.errors import UserError
from misc.io import atomic_write

TargetBuilder = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class PatchSample:
    """One extracted patch, with the reader samples' attributes.

    ``image`` (h, w, 3) uint8; ``inst_map``/``type_map`` (h, w) int32 (``type_map`` None when
    untyped); ``origin`` (row, col) of the window in its source image (None when unknown).
    """

    name: str
    image: np.ndarray
    inst_map: np.ndarray
    type_map: np.ndarray | None
    source: str
    mpp: float | None = None
    origin: tuple[int, int] | None = None


@dataclass(frozen=True)
class _PatchRecord:
    name: str
    source: str
    mpp: float | None
    origin: tuple[int, int] | None
    location: str | int


def _split_patch(array: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Split an (h, w, 4 or 5) integer patch into image, inst_map and type_map."""
    if array.ndim != 3 or array.shape[2] not in (4, 5) or array.dtype.kind not in "iu":
        raise UserError(f"{where}: patch has shape {array.shape} {array.dtype}; expected (h, w, 4 or 5) integers "
                        "[R, G, B, inst(, type)]")
    rgb = array[..., :3]
    if rgb.dtype != np.uint8 and (rgb.min() < 0 or rgb.max() > 255):
        raise UserError(f"{where}: patch RGB values span [{rgb.min()}, {rgb.max()}]; expected 0..255")
    type_map = array[..., 4].astype(np.int32) if array.shape[2] == 5 else None
    return rgb.astype(np.uint8), array[..., 3].astype(np.int32), type_map


class PatchSource(Sequence[PatchSample]):
    """Indexable patches of one split of an extract output (``.npy`` files or one ``.h5``).

    Opening checks the files once (existence, shapes, channels); items are read on access.
    HDF5 files are opened lazily in each process, so the source works in ``DataLoader`` workers.
    """

    def __init__(self, records: list[_PatchRecord], h5_path: Path | None = None) -> None:
        self.records = records
        self.h5_path = h5_path
        self._h5: Any = None
        self._h5_pid: int | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def names(self) -> list[str]:
        """Patch names ``<source name>_<k:03d>`` in order."""
        return [r.name for r in self.records]

    def _h5_file(self) -> Any:
        import h5py

        if self._h5 is None or self._h5_pid != os.getpid():
            self._h5 = h5py.File(self.h5_path, "r")
            self._h5_pid = os.getpid()
        return self._h5

    def __getitem__(self, index: int) -> PatchSample:  # type: ignore[override]
        record = self.records[index]
        if self.h5_path is not None:
            handle = self._h5_file()
            array = np.concatenate([handle["image"][record.location], handle["label"][record.location]], axis=-1)
            where = f"{self.h5_path}[{record.location}]"
        else:
            where = str(record.location)
            try:
                array = np.load(record.location, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise UserError(f"{where}: cannot be read as a .npy patch ({err})") from None
        image, inst_map, type_map = _split_patch(array, where)
        return PatchSample(record.name, image, inst_map, type_map, record.source, record.mpp, record.origin)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_h5"], state["_h5_pid"] = None, None
        return state

    def __repr__(self) -> str:
        where = self.h5_path or (Path(str(self.records[0].location)).parent if self.records else "")
        return f"PatchSource('{where}', patches={len(self)})"


def _records_from_manifest(manifest: dict[str, Any], group: str) -> list[_PatchRecord]:
    root = Path(manifest["_root"])
    fmt = manifest["options"]["format"]
    records = []
    for entry in manifest["groups"][group]:
        for k, patch in enumerate(entry["patches"]):
            location = patch["index"] if fmt == "h5" else str(root / patch["file"])
            records.append(_PatchRecord(f"{entry['name']}_{k:03d}", entry["source"], entry.get("mpp"),
                                        tuple(patch["origin"]), location))
    return records


def _check_npy_files(records: list[_PatchRecord], where: Path) -> None:
    missing = [r.location for r in records if not Path(str(r.location)).is_file()]
    if missing:
        raise UserError(f"{where}: {len(missing)} patch file(s) listed in the manifest are missing, e.g. {missing[0]}; "
                        "re-run extract_patches.py with the same options to finish them")


def _check_h5(path: Path, count: int) -> None:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            shapes = {k: handle[k].shape for k in ("image", "label")}
    except (OSError, KeyError) as err:
        raise UserError(f"{path}: not a readable HDF5 patch file with 'image' and 'label' ({err})") from None
    if shapes["image"][0] < count or shapes["label"][0] < count or shapes["label"][-1] not in (1, 2):
        raise UserError(f"{path}: datasets {shapes} do not hold the {count} patches its manifest lists "
                        "with 1 or 2 label channels")


def open_patches(path: str | os.PathLike, split: str | None = None) -> PatchSource:
    """Open extracted patches: an ``OUT`` folder (``split`` picks a group when it holds
    several), an ``OUT/<split>`` folder, an ``.h5`` patch file, or any folder of HoVer-Net
    ``.npy`` patches without a manifest (names from file stems, origins unknown).

    Raises:
        UserError: nothing readable there, or files the manifest lists are missing.
    """
    path = Path(path)
    if path.suffix == ".h5":
        manifest = load_manifest(path)
        group = resolve_group(manifest, None)
        records = _records_from_manifest(manifest, group)
        _check_h5(path, len(records))
        return PatchSource(records, path)
    if not path.is_dir():
        raise UserError(f"{path}: no such folder or .h5 patch file")
    if (path / MANIFEST_NAME).is_file():
        manifest = load_manifest(path)
        group = resolve_group(manifest, split)
    elif (path.parent / MANIFEST_NAME).is_file() and path.name in load_manifest(path.parent)["groups"]:
        manifest, group = load_manifest(path.parent), path.name
    else:
        files = sorted(path.glob("*.npy"))
        if not files:
            raise UserError(f"{path}: holds no {MANIFEST_NAME} and no .npy patches")
        return PatchSource([_PatchRecord(f.stem, str(f), None, None, str(f)) for f in files])
    records = _records_from_manifest(manifest, group)
    if manifest["options"]["format"] == "h5":
        h5_path = Path(manifest["_root"]) / f"{group}.h5"
        _check_h5(h5_path, len(records))
        return PatchSource(records, h5_path)
    _check_npy_files(records, path)
    return PatchSource(records)


# ----------------------------------------------------------------------------------------- dataset


def _sample_arrays(sample: Any, where: str, check: bool = True, keys: Sequence[str] = SAMPLE_KEYS,
                   ) -> dict[str, np.ndarray]:
    """The arrays of a reader sample or patch as a sample dict, validated when ``check``.

    Keys (:mod:`loader.keys`): ``image`` (H, W, 3) uint8; ``inst_map``, ``type_map`` (H, W)
    int32, ``labels`` (C,) and any further ``keys`` when the sample has them.
    """
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        value = sample.get(key) if isinstance(sample, Mapping) else getattr(sample, key, None)
        if value is not None:
            arrays[key] = np.asarray(value)
    if check:
        image = arrays.get("image")
        if image is None or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            got = "no image" if image is None else f"image {image.shape} {image.dtype}"
            raise UserError(f"{where}: has {got}; expected an (H, W, 3) uint8 image")
        for key in LABEL_MAPS:
            value = arrays.get(key)
            if value is not None and (value.shape != image.shape[:2] or value.dtype.kind not in "iu"):
                raise UserError(f"{where}: {key} is {value.shape} {value.dtype}; expected (H, W) integers with the "
                                f"image's {image.shape[:2]}")
    for key in LABEL_MAPS:
        if key in arrays:
            arrays[key] = arrays[key].astype(np.int32, copy=False)
    return arrays


def _cache_name(name: str, arrays: Mapping[str, np.ndarray]) -> str:
    """File name of a sample's cache entry: its name plus a digest of its arrays."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(repr(arrays[key].shape).encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80]
    return f"{safe}-{digest.hexdigest()[:16]}.npz"


class SampleDataset(torch.utils.data.Dataset):
    """Samples from any source, augmented, turned into a family's targets.

    Args:
        source: an indexable of samples (reader samples or :class:`PatchSample`: attributes
            ``image``, ``inst_map``, ``type_map``), or a path for :func:`open_patches`.
        augment: ``augment(sample_dict, rng) -> sample_dict`` (see :mod:`loader.augment`), or None.
        target_builder: the family's ``builder(sample_dict) -> dict[str, array]``, or None to
            return the (augmented) sample dict. If it has ``precompute(sample_dict) -> dict[str,
            (H, W) array]``, those maps are computed on the un-augmented sample (cached when
            ``cache_dir`` is set), added to the sample and moved by the geometric augmentations
            with the labels before ``builder`` runs (e.g. FullNet weight maps).
        seed: base seed; item ``i`` of epoch ``e`` uses ``default_rng([seed, e, i])``.
        cache_dir: folder for cached ``precompute`` outputs, or None.
        cache_key: names the target options in the cache (``cache_dir/<cache_key>/``); falls
            back to ``target_builder.cache_key``.
        keys: the sample arrays read from each source sample (:func:`loader.keys.sample_keys`
            of the family's extra keys).

    ``__getitem__`` returns a dict of numpy arrays for the default collate: the builder's
    output, plus the augmented ``image`` (H, W, 3) uint8 when the builder returns none.
    """

    def __init__(self, source: Sequence[Any] | str | os.PathLike, augment: Callable[..., dict] | None = None,
                 target_builder: TargetBuilder | None = None, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None, cache_key: str | None = None,
                 keys: Sequence[str] = SAMPLE_KEYS) -> None:
        if isinstance(source, (str, os.PathLike)):
            source = open_patches(source)
        if not hasattr(source, "__len__") or not hasattr(source, "__getitem__"):
            raise UserError(f"dataset source {type(source).__name__} is not indexable; pass a reader dataset, "
                            "a PatchSource or an extract folder / .h5 path")
        self.source = source
        self.augment = augment
        self.target_builder = target_builder
        self.seed = int(seed)
        self.keys = tuple(keys)
        self._precompute = getattr(target_builder, "precompute", None)
        self.cache_dir = None
        if cache_dir is not None:
            key = cache_key or getattr(target_builder, "cache_key", None)
            if self._precompute is None:
                raise UserError("cache_dir is set but the target builder has no precompute() whose results could be cached")
            if not key:
                raise UserError("cache_dir is set without cache_key; name the target options so that caches of "
                                "different options never mix")
            self.cache_dir = Path(cache_dir) / re.sub(r"[^A-Za-z0-9._=-]", "_", str(key))
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._checked: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    @property
    def epoch(self) -> int:
        """Epoch used in the per-item seed."""
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (before iterating a ``DataLoader``; seen by persistent workers too)."""
        self._epoch[0] = int(epoch)

    def item_rng(self, index: int) -> np.random.Generator:
        """The generator of item ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def load(self, index: int) -> dict[str, np.ndarray]:
        """Un-augmented sample dict of item ``index`` (validated the first time it is read)."""
        return self._read(index)[1]

    def _read(self, index: int) -> tuple[str, dict[str, np.ndarray]]:
        sample = self.source[index]
        name = str(getattr(sample, "name", index))
        where = f"{getattr(sample, 'source', '') or 'sample'} ('{name}', item {index})"
        arrays = _sample_arrays(sample, where, check=index not in self._checked, keys=self.keys)
        self._checked.add(index)
        return name, arrays

    def _precomputed(self, name: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``target_builder.precompute`` of an un-augmented sample, through the cache."""
        path = self.cache_dir / _cache_name(name, arrays) if self.cache_dir is not None else None
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as stored:
                return {k: stored[k] for k in stored.files}
        maps = self._precompute(dict(arrays))
        if not isinstance(maps, Mapping):
            raise TypeError(f"target_builder.precompute returned {type(maps).__name__}; expected a dict of arrays")
        maps = {k: np.asarray(v) for k, v in maps.items()}
        if path is not None:
            with atomic_write(path) as handle:
                np.savez(handle, **maps)
        return maps

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        name, arrays = self._read(index)
        if self._precompute is not None:
            arrays.update(self._precomputed(name, arrays))
        if self.augment is not None:
            arrays = self.augment(arrays, self.item_rng(index))
        if self.target_builder is None:
            return arrays
        targets = self.target_builder(arrays)
        if not isinstance(targets, Mapping):
            raise TypeError(f"target_builder returned {type(targets).__name__}; expected a dict of arrays")
        targets = dict(targets)
        targets.setdefault("image", arrays["image"])
        return targets


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=seed_worker)``: seed Python/NumPy global generators from
    torch's per-worker seed (for code outside the per-item generators).

    OpenCV's thread count is deliberately not touched here: in a forked worker,
    ``cv2.setNumThreads`` can deadlock on the parent's thread-pool lock.
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
