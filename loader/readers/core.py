"""Lazy samples and datasets shared by every format reader, plus the class-map and resampling options.

A reader lists :class:`Record` objects (cheap: names, paths, metadata and a loader callable);
:class:`Dataset` turns each into a fresh :class:`Sample` on access, whose arrays are read on the
first use of ``.image``, ``.inst_map``, ``.type_map`` or ``.labels``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, overload

import cv2
import numpy as np
import yaml

from misc.errors import UserError


@dataclass(frozen=True)
class Arrays:
    """The arrays of one sample.

    ``image``: (H, W, 3) uint8 RGB; ``inst_map``/``type_map``: (H, W) int32 or None;
    ``labels``: (C,) int multi-hot patch labels or None.
    """

    image: np.ndarray
    inst_map: np.ndarray | None = None
    type_map: np.ndarray | None = None
    labels: np.ndarray | None = None


@dataclass(frozen=True)
class Record:
    """What a reader knows about one sample before reading it.

    ``group`` is the source image used to keep patches of one image in one split part;
    ``meta`` holds format extras (e.g. CoNIC counts, CPM-15 magnification).
    """

    name: str
    source: Path
    loader: Callable[[], Arrays]
    mpp: float | None = None
    tissue: str | None = None
    class_names: tuple[str, ...] | None = None
    group: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


class Sample:
    """One dataset item; arrays are read once, on first access, then kept by this object.

    Attributes: ``name``, ``source`` (file it came from), ``mpp`` (µm per pixel or None),
    ``tissue``, ``class_names`` (type id ``k`` is ``class_names[k - 1]``), ``group``, ``meta``.
    """

    def __init__(self, record: Record, transform: Callable[[Arrays, Record], Arrays], mpp: float | None) -> None:
        self._record = record
        self._transform = transform
        self.name = record.name
        self.source = record.source
        self.mpp = mpp
        self.tissue = record.tissue
        self.class_names = record.class_names
        self.group = record.group if record.group is not None else record.name
        self.meta = dict(record.meta)

    @functools.cached_property
    def _arrays(self) -> Arrays:
        return self._transform(self._record.loader(), self._record)

    @property
    def image(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        return self._arrays.image

    @property
    def inst_map(self) -> np.ndarray | None:
        """(H, W) int32 instance ids, 0 = background; None for patch-label datasets."""
        return self._arrays.inst_map

    @property
    def type_map(self) -> np.ndarray | None:
        """(H, W) int32 type ids, 0 = background; None when the format has no types."""
        return self._arrays.type_map

    @property
    def labels(self) -> np.ndarray | None:
        """(C,) int64 multi-hot patch labels (``patch_labels`` only), else None."""
        return self._arrays.labels

    def __repr__(self) -> str:
        return f"Sample(name={self.name!r}, source='{self.source}', mpp={self.mpp})"


class Dataset(Sequence[Sample]):
    """A lazy sequence of :class:`Sample`; ``len`` and ``names`` read no pixels."""

    def __init__(
        self,
        kind: str,
        root: Path,
        records: Sequence[Record],
        transform: Callable[[Arrays, Record], Arrays],
        target_mpp: float | None = None,
    ) -> None:
        self.kind = kind
        self.root = root
        self.records = list(records)
        self._transform = transform
        self._target_mpp = target_mpp

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> "Dataset": ...

    def __getitem__(self, index: int | slice) -> "Sample | Dataset":
        if isinstance(index, slice):
            return Dataset(self.kind, self.root, self.records[index], self._transform, self._target_mpp)
        record = self.records[index]
        mpp = self._target_mpp if self._target_mpp is not None else record.mpp
        return Sample(record, self._transform, mpp)

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))

    @property
    def names(self) -> list[str]:
        """Sample names in order."""
        return [r.name for r in self.records]

    @property
    def groups(self) -> list[str]:
        """Source-image group of each sample (its name when the format gives none)."""
        return [r.group if r.group is not None else r.name for r in self.records]

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """Class names of the first sample (all samples of one dataset share them)."""
        return self[0].class_names if self.records else None

    def subset(self, names: Sequence[str], what: str = "split file") -> "Dataset":
        """The samples named in ``names``, in this dataset's order.

        Raises:
            UserError: a name is not in the dataset (names the first missing ones and ``what``).
        """
        wanted = set(names)
        missing = sorted(wanted - set(self.names))
        if missing:
            raise UserError(f"{what}: {len(missing)} name(s) not in the {self.kind} dataset at {self.root}, e.g. {missing[:3]}")
        kept = [r for r in self.records if r.name in wanted]
        return Dataset(self.kind, self.root, kept, self._transform, self._target_mpp)

    def __repr__(self) -> str:
        return f"Dataset(kind={self.kind!r}, root='{self.root}', samples={len(self)})"


class ClassMap:
    """Merge or rename classes: old type id/name -> new class name.

    New ids are 1..K in order of first appearance when walking the old classes in id order
    (unmapped old classes keep their name). Type 0 (background) always stays 0.
    """

    def __init__(self, mapping: Mapping[Any, str], source: str = "class map") -> None:
        if not isinstance(mapping, Mapping) or not mapping:
            raise UserError(f"{source}: expected a non-empty mapping 'old class (name or id): new name'")
        for key, value in mapping.items():
            if not isinstance(value, str) or not value:
                raise UserError(f"{source}: class '{key}' maps to {value!r}; expected a class name")
        self.mapping = dict(mapping)
        self.source = source

    @classmethod
    def load(cls, spec: "str | os.PathLike | Mapping[Any, str]") -> "ClassMap":
        """Build from a mapping or a YAML file holding one."""
        if isinstance(spec, Mapping):
            return cls(spec)
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"{path}: class map YAML file not found")
        try:
            mapping = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise UserError(f"{path}: not valid YAML ({err})") from None
        return cls(mapping, str(path))

    def table(self, old_names: Sequence[str] | None, max_id: int) -> tuple[np.ndarray, tuple[str, ...]]:
        """Lookup table old id -> new id, (max_id + 1,) int32, and the new class names.

        Args:
            old_names: names of old ids 1..K, or None when only ids are known.
            max_id: largest old id that must be mappable.
        """
        known = {str(k) for k in self.mapping}
        if old_names is not None:
            valid = {str(i) for i in range(1, len(old_names) + 1)} | set(old_names)
            unknown = sorted(known - valid)
            if unknown:
                raise UserError(f"{self.source}: class(es) {unknown} not in {list(old_names)}")
            n_old = max(len(old_names), max_id)
        else:
            n_old = max_id
        lut = np.zeros(n_old + 1, dtype=np.int32)
        new_names: list[str] = []
        for old_id in range(1, n_old + 1):
            old_name = old_names[old_id - 1] if old_names is not None and old_id <= len(old_names) else None
            new = self.mapping.get(old_name) if old_name is not None else None
            new = new or self.mapping.get(old_id) or self.mapping.get(str(old_id)) or old_name
            if new is None:
                raise UserError(f"{self.source}: type id {old_id} has no class name and is not mapped")
            if new not in new_names:
                new_names.append(new)
            lut[old_id] = new_names.index(new) + 1
        return lut, tuple(new_names)

    def apply(self, arrays: Arrays, old_names: Sequence[str] | None) -> tuple[Arrays, tuple[str, ...]]:
        """Map ``type_map`` through the table and OR-merge ``labels`` columns."""
        if arrays.labels is not None:
            lut, names = self.table(old_names, len(arrays.labels))
            merged = np.zeros(len(names), dtype=np.int64)
            np.maximum.at(merged, lut[1:] - 1, arrays.labels)
            return Arrays(arrays.image, labels=merged), names
        if arrays.type_map is None:
            return arrays, tuple(old_names or ())
        lut, names = self.table(old_names, int(arrays.type_map.max(initial=0)))
        return Arrays(arrays.image, arrays.inst_map, lut[arrays.type_map], arrays.labels), names

    def class_names(self, old_names: Sequence[str] | None) -> tuple[str, ...] | None:
        """New class names, when the old ones are known."""
        return None if old_names is None else self.table(old_names, len(old_names))[1]


def resample_arrays(arrays: Arrays, scale: float) -> Arrays:
    """Resize by ``scale`` (new size = round(old * scale)): bilinear image, nearest labels.

    Both use pixel-centre alignment, so label pixel (r, c) comes from old pixel
    ``floor((r + 0.5) / scale)``.
    """
    height, width = arrays.image.shape[:2]
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    image = cv2.resize(arrays.image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    rows = np.minimum(((np.arange(new_h) + 0.5) * height / new_h).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(new_w) + 0.5) * width / new_w).astype(np.int64), width - 1)

    def nearest(label: np.ndarray | None) -> np.ndarray | None:
        return None if label is None else np.ascontiguousarray(label[rows[:, None], cols[None, :]])

    return Arrays(image, nearest(arrays.inst_map), nearest(arrays.type_map), arrays.labels)


def read_split_file(spec: str) -> tuple[list[str], str]:
    """Names listed by a split file.

    ``spec`` is ``PATH`` (a ``.txt`` with one name per line, or a JSON/YAML list) or
    ``PATH:PART`` for a JSON/YAML mapping ``part -> [names]`` as written by
    :func:`loader.splits.write_splits`.
    """
    path, part = Path(spec), None
    if not path.is_file() and ":" in spec:
        head, part = spec.rsplit(":", 1)
        path = Path(head)
    if not path.is_file():
        raise UserError(f"split '{spec}': no such split file (and not a split name of this dataset)")
    text = path.read_text()
    if path.suffix.lower() == ".txt":
        content: Any = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        try:
            content = yaml.safe_load(text)  # JSON is YAML
        except yaml.YAMLError as err:
            raise UserError(f"{path}: split file is not valid JSON/YAML ({err})") from None
    if isinstance(content, Mapping) and "parts" in content:
        content = content["parts"]
    if isinstance(content, Mapping):
        if part is None or part not in content:
            raise UserError(f"{path}: choose a part as '{path}:PART', PART one of {sorted(content)}")
        content = content[part]
    elif part is not None:
        raise UserError(f"{path}: holds one list of names; drop ':{part}'")
    if not isinstance(content, list) or not all(isinstance(n, str) for n in content):
        raise UserError(f"{path}: expected a list of sample names")
    return content, str(spec)


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``['key=value', ...]`` from a command line -> options; values parsed with ``yaml.safe_load``."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"option '{pair}': expected KEY=VALUE")
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            options[key] = value
    return options
