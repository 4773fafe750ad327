"""Raw prediction files: band writers, the ``.npz`` packer and the reader.

Raw file layout (``.npz``; the same names as datasets/attributes of a group in ``.h5``):
every map the family's ``predict`` emits, as (H, W, C) float32 (``np_prob``, ``hv``,
``tp_prob``, ...), plus ``family`` (str), ``config`` (the resolved config as JSON text),
``mag`` (int magnification the image was taken at), ``source`` (the image path) and
``image`` ((H, W, 3) uint8, for overlays). Optional entries, written only when there is
something to record: ``members`` (an ensemble's JSON text of each checkpoint's family and path,
:mod:`inference.ensemble`), ``grids`` (JSON text ``{map name: {step, size, offset}}``, the
image-pixel geometry of maps that hold one value per window, see
:class:`inference.tiling.GridGeometry`), ``family_state`` (JSON text of the family's fitted
state, e.g. per-class thresholds) and ``slide`` (JSON text of a whole slide's geometry when the
maps cover one: level-0 ``dimensions`` (W, H), ``mpp`` and ``map_downsample``, level-0 pixels per
map pixel; :mod:`inference.slide_family`). ``find_raw`` and ``RawRef.load`` read them back.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable

import numpy as np

from misc.errors import UserError

META_NAMES = ("family", "config", "mag", "source", "image")
#: Metadata that only some raw files hold: an ensemble's members.
MEMBERS_NAME = "members"
OPTIONAL_META = (MEMBERS_NAME, "grids", "family_state", "slide")


H5_NAME = "raw.h5"


OUTPUT_FORMATS = ("npz", "h5")


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
        self.grids: dict[str, dict[str, float]] = {}

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

    def grid(self, name: str, values: np.ndarray, geometry: Any) -> None:
        """Write grid map ``name`` ((R, K, C) float32) whole to ``folder/<name>.npy``; keep its geometry."""
        self.paths[name] = self.folder / f"{name}.npy"
        np.save(self.paths[name], np.asarray(values, "<f4"))
        self.grids[name] = geometry.as_dict()

    def close(self) -> None:
        """Close every open map file."""
        for handle in self.files.values():
            handle.close()


class H5BandWriter:
    """Band sink writing each map into an (H, W, C) float32 dataset of an HDF5 group."""

    def __init__(self, group: Any, height: int) -> None:
        self.group = group
        self.height = height
        self.grids: dict[str, dict[str, float]] = {}

    def __call__(self, row_start: int, row_stop: int, band: dict[str, np.ndarray]) -> None:
        for name, values in band.items():
            if name not in self.group:
                self.group.create_dataset(name, shape=(self.height, *values.shape[1:]), dtype="f4", chunks=True)
            self.group[name][row_start:row_stop] = values

    def grid(self, name: str, values: np.ndarray, geometry: Any) -> None:
        """Write grid map ``name`` ((R, K, C) float32) as a dataset; keep its geometry."""
        self.group.create_dataset(name, data=np.asarray(values, "f4"))
        self.grids[name] = geometry.as_dict()


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


def meta_arrays(family: Any, image: np.ndarray, source: Path, mag: int,
                grids: dict[str, dict] | None = None) -> dict[str, np.ndarray]:
    """The metadata arrays of a raw file (:data:`META_NAMES`, and :data:`OPTIONAL_META` when
    there are ``grids`` or the family has a fitted ``extra_state``); ``image`` is (H, W, 3) uint8."""
    meta = {
        "family": np.array(family.name),
        "config": np.array(json.dumps(family.cfg)),
        "mag": np.array(int(mag)),
        "source": np.array(str(source)),
        "image": image,
    }
    if grids:
        meta["grids"] = np.array(json.dumps(grids))
    if getattr(family, "extra_state", None):
        meta["family_state"] = np.array(json.dumps(family.extra_state))
    return meta


def check_map_names(names: Iterable[str]) -> None:
    """Refuse map names that clash with the metadata names (:class:`UserError`)."""
    reserved = (*META_NAMES, *OPTIONAL_META)
    clash = sorted(set(names) & set(reserved))
    if clash:
        raise UserError(f"the family's predict emits {clash}, names reserved for raw-file metadata {list(reserved)}")


def complete_groups(h5file: Any) -> set[str]:
    """Names of the image groups of an open ``raw.h5`` marked complete."""
    return {name for name, group in h5file.items() if group.attrs.get("complete", False)}


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
        members: an ensemble's ``[{'family', 'checkpoint'}, ...]``; empty for one checkpoint.
        grids: ``{map name: {step, size, offset}}`` of the maps with one value per window.
        family_state: the family's fitted state at inference (``Family.extra_state``).
        slide: a whole slide's geometry (``dimensions``, ``mpp``, ``map_downsample``); empty for an image.
    """

    name: str
    maps: dict[str, np.ndarray]
    family: str
    config: dict
    mag: int
    source: str
    image: np.ndarray
    members: list[dict] = field(default_factory=list)
    grids: dict = field(default_factory=dict)
    family_state: dict = field(default_factory=dict)
    slide: dict = field(default_factory=dict)


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
                meta = {key: arrays.pop(key) for key in (*META_NAMES, *OPTIONAL_META) if key in arrays}
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
        maps = {key: np.asarray(value, np.float32) for key, value in arrays.items()}
        check_finite(maps, where)
        return RawPrediction(
            name=self.name,
            maps=maps,
            family=str(meta["family"]),
            config=json.loads(str(meta["config"])),
            mag=int(meta["mag"]),
            source=str(meta["source"]),
            image=np.asarray(meta["image"], np.uint8),
            members=json.loads(str(meta[MEMBERS_NAME])) if meta.get(MEMBERS_NAME) is not None else [],
            grids=json.loads(str(meta["grids"])) if meta.get("grids") is not None else {},
            family_state=json.loads(str(meta["family_state"])) if meta.get("family_state") is not None else {},
            slide=json.loads(str(meta["slide"])) if meta.get("slide") is not None else {},
        )


def check_finite(maps: dict[str, np.ndarray], where: str) -> None:
    """Refuse maps holding NaN or infinite values (a diverged network, a damaged file).

    Raises:
        UserError: naming ``where``, the first such map and how many values are not finite.
    """
    for key, values in maps.items():
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise UserError(f"{where}: map '{key}' holds {bad} NaN or infinite values; predict the image again "
                            "with infer.py (a checkpoint that gives NaN needs retraining)")


def find_raw(input_path: str | os.PathLike) -> list[RawRef]:
    """Raw predictions under ``input_path``: a folder of ``.npz`` (and/or ``raw.h5``), and the
    slide folders ``<stem>/<stem>.npz`` in it (``infer.py`` on slides of a family that infers
    slides itself), or one file.

    Only complete ``.h5`` groups are listed.

    Raises:
        UserError: nothing to read there.
    """
    input_path = Path(input_path)
    if input_path.is_dir():
        files = sorted(p for p in input_path.iterdir() if p.is_file() and p.suffix.lower() in (".npz", ".h5"))
        files += sorted(p / f"{p.name}.npz" for p in input_path.iterdir() if (p / f"{p.name}.npz").is_file())
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
                    refs.extend(RawRef(path, name) for name in sorted(complete_groups(h5file)))
            except OSError as err:
                raise UserError(f"{path}: not a readable HDF5 file ({err})") from None
        elif path.suffix.lower() == ".npz":
            refs.append(RawRef(path))
    if not refs:
        raise UserError(f"{input_path}: no raw predictions (.npz or .h5 from infer.py) found")
    return refs
