"""HoVer-Net-compatible patch extraction, its manifest, and exact reassembly.

A window is ``win = (wh, ww)`` pixels; windows start every ``step = (sh, sw)`` pixels.

- ``mirror`` mode reflect-pads the image by ``(win - step) // 2`` at the top/left and the rest
  at the bottom/right, then takes the valid windows of the padded image, plus one window flush
  with the bottom edge, one flush with the right edge and the bottom-right corner when the
  grid does not end exactly there (HoVer-Net ``extract_patches.py``). The central
  ``step x step`` crops of the windows then tile the source image exactly.
- ``valid`` mode takes the same windows from the unpadded image.

Patches are ``(wh, ww, C)`` int32 arrays ``[R, G, B, inst]`` (``C = 4``) or
``[R, G, B, inst, type]`` (``C = 5``) stored as one ``.npy`` per patch
(``OUT/<group>/<name>_<k:03d>.npy``) or in one chunked, gzip-compressed HDF5 file per group
(``OUT/<group>.h5``). ``OUT/manifest.json`` records the options, a SHA-256 of each source's
decoded arrays and each patch's source and window origin (row, column of the window's top-left
pixel in source-image coordinates; negative in the mirror border).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from misc.errors import UserError
from misc.io import atomic_write

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
MODES = ("mirror", "valid")
FORMATS = ("npy", "h5")
DEFAULT_GROUP = "all"
PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class ExtractOptions:
    """What determines the patches of a source; a folder holds patches of one option set.

    Attributes:
        win: window (height, width) in pixels.
        step: step (height, width) in pixels, ``0 < step <= win``.
        mode: ``"mirror"`` or ``"valid"``.
        fmt: ``"npy"`` or ``"h5"``.
        kind: reader kind the sources came from (provenance; ``""`` for in-memory samples).
        root: dataset root the sources came from (provenance).
        reader_options: keyword options given to the reader.
        compression: gzip level 1-9 for HDF5 output; 0 stores uncompressed.
    """

    win: tuple[int, int]
    step: tuple[int, int]
    mode: str = "mirror"
    fmt: str = "npy"
    kind: str = ""
    root: str = ""
    reader_options: tuple[tuple[str, Any], ...] = ()
    compression: int = 4

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"extract mode '{self.mode}' is not one of {list(MODES)}")
        if self.fmt not in FORMATS:
            raise UserError(f"patch format '{self.fmt}' is not one of {list(FORMATS)}")
        for w, s in zip(self.win, self.step):
            if not 0 < s <= w:
                raise UserError(f"step {list(self.step)} must be > 0 and <= window {list(self.win)}")
        if not 0 <= self.compression <= 9:
            raise UserError(f"gzip compression level {self.compression} must be in 0..9")

    @property
    def margin(self) -> tuple[int, int]:
        """Top/left offset of a window's central step crop: ``(win - step) // 2`` per axis."""
        return ((self.win[0] - self.step[0]) // 2, (self.win[1] - self.step[1]) // 2)

    def to_json(self) -> dict[str, Any]:
        """The options as a JSON-ready dict (what the manifest compares)."""
        return {
            "win": list(self.win),
            "step": list(self.step),
            "mode": self.mode,
            "format": self.fmt,
            "kind": self.kind,
            "root": self.root,
            "reader_options": {k: v for k, v in self.reader_options},
            **({"compression": self.compression} if self.fmt == "h5" else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ExtractOptions":
        """Inverse of :meth:`to_json`."""
        return cls(
            win=tuple(data["win"]),
            step=tuple(data["step"]),
            mode=data["mode"],
            fmt=data["format"],
            kind=data.get("kind", ""),
            root=data.get("root", ""),
            reader_options=tuple(sorted(data.get("reader_options", {}).items())),
            compression=data.get("compression", 4),
        )


def _axis_starts(length: int, win: int, step: int) -> list[int]:
    """Window starts along one axis: every ``step`` while the window fits, plus a flush end."""
    if length < win:
        return []
    starts = list(range(0, length - win + 1, step))
    if starts[-1] != length - win:
        starts.append(length - win)
    return starts


def window_origins(shape: tuple[int, int], options: ExtractOptions) -> list[tuple[int, int]]:
    """Top-left (row, col) of every window in source-image coordinates, row-major.

    Args:
        shape: source (H, W) in pixels.

    Raises:
        UserError: in ``valid`` mode, the image is smaller than the window.
    """
    pad_top, pad_left = options.margin if options.mode == "mirror" else (0, 0)
    extra = (options.win[0] - options.step[0], options.win[1] - options.step[1]) if options.mode == "mirror" else (0, 0)
    rows = _axis_starts(shape[0] + extra[0], options.win[0], options.step[0])
    cols = _axis_starts(shape[1] + extra[1], options.win[1], options.step[1])
    if not rows or not cols:
        need, size = ("window", options.win) if options.mode == "valid" else ("step", options.step)
        raise UserError(
            f"image of shape {tuple(shape)} is smaller than the {need} {list(size)} in {options.mode} mode; "
            "use a smaller --win/--step" + (" or --mode mirror" if options.mode == "valid" else "")
        )
    return [(r - pad_top, c - pad_left) for r in rows for c in cols]


def stack_channels(image: np.ndarray, inst_map: np.ndarray, type_map: np.ndarray | None) -> np.ndarray:
    """``[R, G, B, inst(, type)]`` as one (H, W, 4 or 5) int32 array (HoVer-Net patch layout)."""
    planes = [image.astype(np.int32), inst_map[..., None].astype(np.int32)]
    if type_map is not None:
        planes.append(type_map[..., None].astype(np.int32))
    return np.concatenate(planes, axis=-1)


def iter_windows(stacked: np.ndarray, options: ExtractOptions) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """Yield ``(origin, window)`` for every window of one (H, W, C) source, row-major.

    ``origin`` is the window's top-left (row, col) in source coordinates; ``window`` is a
    (wh, ww, C) view with ``stacked``'s dtype (of the reflect-padded source in mirror mode).
    """
    origins = window_origins(stacked.shape[:2], options)
    offset = (0, 0)
    if options.mode == "mirror":
        offset = options.margin
        bottom = options.win[0] - options.step[0] - offset[0]
        right = options.win[1] - options.step[1] - offset[1]
        stacked = np.pad(stacked, ((offset[0], bottom), (offset[1], right), (0, 0)), mode="reflect")
    wh, ww = options.win
    for r, c in origins:
        yield (r, c), stacked[r + offset[0] : r + offset[0] + wh, c + offset[1] : c + offset[1] + ww]


def source_digest(image: np.ndarray, inst_map: np.ndarray, type_map: np.ndarray | None) -> str:
    """SHA-256 hex digest of a source's decoded arrays (uint8 image, int32 maps, with shapes)."""
    digest = hashlib.sha256()
    for array, dtype in ((image, np.uint8), (inst_map, np.int32), (type_map, np.int32)):
        if array is None:
            digest.update(b"none")
            continue
        array = np.ascontiguousarray(array, dtype=dtype)
        digest.update(repr(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _check_sample(name: str, source: str, image: np.ndarray, inst_map: np.ndarray | None, type_map: np.ndarray | None) -> None:
    """Reject a sample whose arrays do not make a patch source."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UserError(f"{source}: image of '{name}' has shape {image.shape} {image.dtype}; expected (H, W, 3) uint8")
    if inst_map is None:
        raise UserError(f"{source}: '{name}' has no instance map; patch extraction needs instance labels")
    if inst_map.shape != image.shape[:2]:
        raise UserError(f"{source}: inst_map of '{name}' has shape {inst_map.shape}; expected {image.shape[:2]} like its image")
    if type_map is not None and type_map.shape != image.shape[:2]:
        raise UserError(f"{source}: type_map of '{name}' has shape {type_map.shape}; expected {image.shape[:2]} like its image")


# ----------------------------------------------------------------------------------------- manifest


def _new_manifest(options: ExtractOptions) -> dict[str, Any]:
    return {"version": MANIFEST_VERSION, "options": options.to_json(), "groups": {}}


def manifest_path(out_dir: str | os.PathLike) -> Path:
    """``OUT/manifest.json``."""
    return Path(out_dir) / MANIFEST_NAME


def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read a manifest from ``OUT``, ``OUT/manifest.json`` or an ``.h5`` patch file.

    Raises:
        UserError: no manifest there, or it is not valid JSON of this format.
    """
    path = Path(path)
    if path.suffix == ".h5":
        return _h5_manifest(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"{path}: no patch manifest here; expected the OUT folder of extract_patches.py")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot be read as a patch manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION or "groups" not in manifest:
        raise UserError(f"{path}: not a version-{MANIFEST_VERSION} patch manifest (keys 'version', 'options', 'groups')")
    manifest["_root"] = str(path.parent)
    return manifest


def _save_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    body = {k: v for k, v in manifest.items() if not k.startswith("_")}
    with atomic_write(manifest_path(out_dir), "w") as handle:
        json.dump(body, handle, indent=1)


def _remove_outputs(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Delete the patch files a previous manifest describes (``--overwrite``)."""
    fmt = manifest.get("options", {}).get("format", "npy")
    for group in manifest.get("groups", {}):
        target = out_dir / (f"{group}.h5" if fmt == "h5" else group)
        if target.is_dir():
            shutil.rmtree(target)
        for path in (target, target.with_name(target.name + PARTIAL_SUFFIX)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    with contextlib.suppress(FileNotFoundError):
        manifest_path(out_dir).unlink()


def _prepare_out_dir(out_dir: Path, options: ExtractOptions, overwrite: bool) -> dict[str, Any]:
    """Open or start the manifest of ``out_dir``; refuse different options unless ``overwrite``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if manifest_path(out_dir).is_file():
        manifest = load_manifest(out_dir)
        if manifest["options"] == options.to_json():
            return manifest
        if not overwrite:
            new = options.to_json()
            changed = {k: f"{manifest['options'].get(k)!r} -> {new[k]!r}" for k in new if manifest["options"].get(k) != new[k]}
            raise UserError(f"{out_dir}: holds patches made with other options ({changed}); "
                            "use another folder, or --overwrite to replace them")
        _remove_outputs(out_dir, manifest)
    elif any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"{out_dir}: is not empty and holds no {MANIFEST_NAME}; use an empty folder or --overwrite")
    manifest = _new_manifest(options)
    manifest["_root"] = str(out_dir)
    _save_manifest(out_dir, manifest)
    return manifest


# ----------------------------------------------------------------------------------------- writers


class _NpyWriter:
    """One ``.npy`` per patch under ``OUT/<group>/``, each written atomically."""

    def __init__(self, out_dir: Path, group: str) -> None:
        self.out_dir = out_dir
        self.group = group
        (out_dir / group).mkdir(parents=True, exist_ok=True)

    def is_done(self, entry: dict[str, Any]) -> bool:
        """Whether every patch file of a manifest entry exists."""
        return all((self.out_dir / p["file"]).is_file() for p in entry["patches"])

    def write(self, name: str, windows: Iterator[tuple[tuple[int, int], np.ndarray]], source_index: int) -> list[dict[str, Any]]:
        """Write ``OUT/<group>/<name>_<k:03d>.npy`` for each window; return patch records."""
        records = []
        for k, (origin, window) in enumerate(windows):
            relative = f"{self.group}/{name}_{k:03d}.npy"
            with atomic_write(self.out_dir / relative) as handle:
                np.save(handle, np.ascontiguousarray(window))
            records.append({"file": relative, "origin": list(origin)})
        return records

    def close(self, entries: list[dict[str, Any]]) -> None:
        """Nothing to finalise: every patch file is already in place."""

    def abort(self) -> None:
        """Nothing to undo: unfinished sources are redone on the next run."""


class _H5Writer:
    """One gzip-compressed HDF5 file per group, built as ``<group>.h5.partial`` then renamed.

    Datasets: ``image`` (N, wh, ww, 3) uint8, ``label`` (N, wh, ww, 1 or 2) int32 (inst, type),
    ``origin`` (N, 2) int32, ``source_index`` (N,) int32; one patch per chunk. The attribute
    ``manifest`` holds the options and source entries as JSON, so the file stands alone.
    """

    KEYS = ("image", "label", "origin", "source_index")

    def __init__(self, out_dir: Path, group: str, entries: list[dict[str, Any]], options: ExtractOptions) -> None:
        import h5py

        self.final = out_dir / f"{group}.h5"
        self.partial = self.final.with_name(self.final.name + PARTIAL_SUFFIX)
        self.options = options
        if self.final.is_file() and not self.partial.exists():
            os.replace(self.final, self.partial)
        self.handle = None
        if self.partial.is_file():
            try:
                self.handle = h5py.File(self.partial, "a")
            except OSError as err:
                log.warning("%s: unreadable unfinished file (%s); extracting this split again", self.partial, err)
                self.partial.unlink()
        if self.handle is None or "image" not in self.handle:
            entries.clear()
            if self.handle is None:
                self.handle = h5py.File(self.partial, "w")
        else:
            count = sum(len(e["patches"]) for e in entries)
            for key in self.KEYS:
                self.handle[key].resize(min(count, self.handle[key].shape[0]), axis=0)

    def is_done(self, entry: dict[str, Any]) -> bool:
        """Whether every patch of a manifest entry is in the file."""
        return "image" in self.handle and all(p["index"] < self.handle["image"].shape[0] for p in entry["patches"])

    def _create(self, channels: int) -> None:
        wh, ww = self.options.win
        level = self.options.compression
        gzip = {"compression": "gzip", "compression_opts": level, "shuffle": True} if level else {}
        for key, depth, dtype in (("image", 3, np.uint8), ("label", channels - 3, np.int32)):
            self.handle.create_dataset(key, (0, wh, ww, depth), dtype, maxshape=(None, wh, ww, depth),
                                       chunks=(1, wh, ww, depth), **gzip)
        self.handle.create_dataset("origin", (0, 2), np.int32, maxshape=(None, 2), chunks=(1024, 2))
        self.handle.create_dataset("source_index", (0,), np.int32, maxshape=(None,), chunks=(1024,))

    def write(self, name: str, windows: Iterator[tuple[tuple[int, int], np.ndarray]], source_index: int) -> list[dict[str, Any]]:
        """Append each window to the datasets; return patch records (row index, origin)."""
        records = []
        for origin, window in windows:
            if "image" not in self.handle:
                self._create(window.shape[-1])
            index = self.handle["image"].shape[0]
            for key in self.KEYS:
                self.handle[key].resize(index + 1, axis=0)
            self.handle["image"][index] = window[..., :3]
            self.handle["label"][index] = window[..., 3:]
            self.handle["origin"][index] = origin
            self.handle["source_index"][index] = source_index
            records.append({"index": index, "origin": list(origin)})
        self.handle.flush()
        return records

    def close(self, entries: list[dict[str, Any]]) -> None:
        """Store the manifest inside the file, close it and rename it to its final name."""
        self.handle.attrs["manifest"] = json.dumps({"options": self.options.to_json(), "sources": entries})
        self.handle.close()
        os.replace(self.partial, self.final)

    def abort(self) -> None:
        """Close the unfinished file; the next run resumes from the manifest."""
        with contextlib.suppress(Exception):
            self.handle.close()


# ----------------------------------------------------------------------------------------- extraction


def extract_samples(
    samples: Sequence[Any],
    out_dir: str | os.PathLike,
    options: ExtractOptions,
    group: str = DEFAULT_GROUP,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Cut every sample into windows and write them with a manifest; resumable.

    Sources already in the manifest with all their patches present are skipped without
    reading their pixels; a source interrupted half-way is extracted again.

    Args:
        samples: sequence of objects with ``.name``, ``.image`` (H, W, 3) uint8, ``.inst_map``
            (H, W) int32, ``.type_map`` (H, W) int32 or None, optionally ``.source``/``.mpp``.
        out_dir: output folder (created).
        group: split name; patches go to ``OUT/<group>/`` or ``OUT/<group>.h5``.
        overwrite: replace outputs made with other options instead of refusing.
        progress: show a progress bar on stderr.

    Returns:
        The manifest (also saved to ``OUT/manifest.json``).

    Raises:
        UserError: ``out_dir`` holds other options (without ``overwrite``), or a sample is invalid.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    manifest = _prepare_out_dir(out_dir, options, overwrite)
    entries: list[dict[str, Any]] = manifest["groups"].setdefault(group, [])
    writer = _H5Writer(out_dir, group, entries, options) if options.fmt == "h5" else _NpyWriter(out_dir, group)
    if options.fmt == "npy":
        entries[:] = [e for e in entries if writer.is_done(e)]
    done = {e["name"] for e in entries}
    seen: set[str] = set()
    try:
        with tqdm(total=len(samples), desc=f"extract {group}", unit="image", disable=not progress) as bar:
            for sample in samples:
                if sample.name in seen:
                    raise UserError(f"{getattr(sample, 'source', '')}: a second image named '{sample.name}' in split "
                                    f"'{group}'; image names must be unique")
                seen.add(sample.name)
                if sample.name not in done:
                    channels = entries[0]["channels"] if entries else None
                    entries.append(_extract_one(sample, writer, options, len(entries), channels))
                    _save_manifest(out_dir, manifest)
                bar.update(1)
    except BaseException:
        writer.abort()
        raise
    writer.close(entries)
    _save_manifest(out_dir, manifest)
    return manifest


def _extract_one(sample: Any, writer: _NpyWriter | _H5Writer, options: ExtractOptions, source_index: int,
                 channels: int | None) -> dict[str, Any]:
    """Cut and write one sample (``channels``: that of the split's earlier images, if any);
    return its manifest entry."""
    image, inst_map, type_map = sample.image, sample.inst_map, sample.type_map
    source = str(getattr(sample, "source", sample.name))
    _check_sample(sample.name, source, image, inst_map, type_map)
    stacked = stack_channels(image, inst_map, type_map)
    if channels is not None and stacked.shape[-1] != channels:
        raise UserError(f"{source}: '{sample.name}' gives {stacked.shape[-1]}-channel patches but earlier images of this "
                        f"split gave {channels}; a split must be all typed or all untyped")
    mpp = getattr(sample, "mpp", None)
    records = writer.write(sample.name, iter_windows(stacked, options), source_index)
    return {
        "name": sample.name,
        "source": source,
        "mpp": float(mpp) if mpp is not None else None,
        "shape": list(image.shape[:2]),
        "channels": int(stacked.shape[-1]),
        "sha256": source_digest(image, inst_map, type_map),
        "patches": records,
    }


def group_name(split: str | None) -> str:
    """Folder/file name of a split: ``all`` for the whole dataset, the part after ``:`` for
    ``splits.json:PART``, the stem of a names file, with unsafe characters replaced."""
    if split is None:
        return DEFAULT_GROUP
    name = split.rpartition(":")[2] if ":" in split else (Path(split).stem if Path(split).suffix else split)
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or DEFAULT_GROUP


def extract_dataset(
    kind: str,
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: ExtractOptions,
    splits: Sequence[str | None] = (None,),
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Read a dataset with :func:`loader.readers.read_dataset` and extract each split.

    Args:
        kind, root: reader kind and dataset root (``options.reader_options`` go to the reader).
        splits: reader splits; each is written as group :func:`group_name` (``None``: the
            whole dataset, group ``all``).
        limit: extract only the first ``limit`` images of each split (quick checks).

    Returns:
        The manifest.
    """
    from loader.readers import read_dataset

    manifest: dict[str, Any] = {}
    for split in splits:
        samples = read_dataset(kind, root, split=split, **dict(options.reader_options))
        if limit is not None:
            samples = samples[:limit]
        manifest = extract_samples(samples, out_dir, options, group_name(split), overwrite, progress)
        overwrite = False
    return manifest


# ----------------------------------------------------------------------------------------- reading back


def _h5_manifest(path: Path) -> dict[str, Any]:
    import h5py

    if not path.is_file():
        raise UserError(f"{path}: no such HDF5 patch file")
    try:
        with h5py.File(path, "r") as handle:
            stored = json.loads(handle.attrs["manifest"])
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"{path}: not an HDF5 patch file written by extract_patches.py ({type(err).__name__}: {err})") from None
    return {"version": MANIFEST_VERSION, "options": stored["options"], "groups": {path.stem: stored["sources"]},
            "_root": str(path.parent), "_files": {path.stem: str(path)}}


def iter_source_patches(manifest: dict[str, Any], group: str) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """Yield ``(source entry, patches (N, wh, ww, C) int32)`` for each source of ``group``."""
    root = Path(manifest["_root"])
    entries = manifest["groups"][group]
    if manifest["options"]["format"] == "h5":
        import h5py

        with h5py.File(manifest.get("_files", {}).get(group, root / f"{group}.h5"), "r") as handle:
            for entry in entries:
                index = [p["index"] for p in entry["patches"]]
                lo, hi = index[0], index[-1] + 1
                yield entry, np.concatenate([handle["image"][lo:hi].astype(np.int32), handle["label"][lo:hi]], axis=-1)
    else:
        for entry in entries:
            yield entry, np.stack([np.load(root / p["file"], allow_pickle=False) for p in entry["patches"]])


def resolve_group(manifest: dict[str, Any], split: str | None) -> str:
    """The group (split) name to read: ``split``, or the only group when ``split`` is None."""
    groups = list(manifest["groups"])
    if split is not None:
        if split not in groups:
            raise UserError(f"{manifest['_root']}: has no split '{split}'; it has {groups}")
        return split
    if len(groups) != 1:
        raise UserError(f"{manifest['_root']}: holds splits {groups}; name one")
    return groups[0]


def reassemble(manifest: str | os.PathLike | dict[str, Any], split: str | None = None,
               verify: bool = True) -> dict[str, np.ndarray]:
    """Rebuild each source image from its patches' central ``step x step`` crops.

    In ``valid`` mode the image border that no central crop covers is taken from the
    in-image part of the windows.

    Args:
        manifest: an extract OUT folder, its ``manifest.json``, an ``.h5`` patch file or a
            manifest dict from :func:`load_manifest`.
        split: the group to rebuild; may be omitted when there is only one.
        verify: check each rebuilt source against the SHA-256 recorded at extraction.

    Returns:
        ``{name: (H, W, 4 or 5) int32 [R, G, B, inst(, type)]}``.

    Raises:
        RuntimeError: ``verify`` is set and a rebuilt source differs from what was extracted.
    """
    if not isinstance(manifest, dict):
        manifest = load_manifest(manifest)
    options = ExtractOptions.from_json(manifest["options"])
    group = resolve_group(manifest, split)
    rebuilt = {}
    for entry, patches in iter_source_patches(manifest, group):
        canvas = _paste_windows(entry, patches, options)
        if verify:
            type_map = canvas[..., 4] if canvas.shape[-1] == 5 else None
            if source_digest(canvas[..., :3].astype(np.uint8), canvas[..., 3], type_map) != entry["sha256"]:
                raise RuntimeError(f"{entry['source']}: reassembled '{entry['name']}' differs from the extracted source")
        rebuilt[entry["name"]] = canvas
    return rebuilt


def _paste_windows(entry: dict[str, Any], patches: np.ndarray, options: ExtractOptions) -> np.ndarray:
    """Paste the central crops (and, for ``valid`` mode, in-image window parts) onto a canvas."""
    height, width = entry["shape"]
    canvas = np.zeros((height, width, patches.shape[-1]), dtype=np.int32)
    covered = np.zeros((height, width), dtype=bool)
    (wh, ww), (sh, sw), (mt, ml) = options.win, options.step, options.margin
    boxes = [(0, 0, wh, ww)] if options.mode == "valid" else []
    boxes.append((mt, ml, mt + sh, ml + sw))
    for top, left, bottom, right in boxes:
        for patch, record in zip(patches, entry["patches"]):
            r0, c0 = record["origin"][0] + top, record["origin"][1] + left
            rs, cs = max(r0, 0), max(c0, 0)
            re, ce = min(r0 + bottom - top, height), min(c0 + right - left, width)
            canvas[rs:re, cs:ce] = patch[top + rs - r0 : top + re - r0, left + cs - c0 : left + ce - c0]
            covered[rs:re, cs:ce] = True
    if not covered.all():
        raise RuntimeError(f"{entry['source']}: the windows of '{entry['name']}' leave {int((~covered).sum())} pixels uncovered")
    return canvas

