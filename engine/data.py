"""Training data: sources (synthetic, ``KIND:ROOT``, patch folders), the train/val split by
source image, the augmented training dataset and this process's DataLoader shard."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from engine.distributed import DistInfo
from loader.augment import build_augment, load_augment_preset
from loader.datasets import SampleDataset, open_patches, seed_worker
from loader.keys import IMAGE, NAME, SAMPLE_KEYS, sample_keys
from loader.readers import read_dataset
from loader.readers.core import Arrays, Dataset, Record
from loader.synthetic import NUCLEUS_TYPES, generate_tile, tile_seed
from loader.synthetic_tissue import PATCH_CLASSES, generate_tissue_tile
from misc.errors import UserError
from models.base import Family


#: ``data.synthetic.kind``: nucleus tiles (instance and type maps) or tissue tiles (tissue-type
#: map and patch labels, :mod:`loader.synthetic_tissue`).
SYNTHETIC_KINDS = ("nuclei", "tissue")


def _synthetic_arrays(seed: int, size: int, kind: str = "nuclei") -> Any:
    """Arrays of one synthetic tile (module-level so DataLoader workers can pickle it)."""
    if kind == "tissue":
        tile = generate_tissue_tile(seed, (size, size))
        return Arrays(image=tile.image, type_map=tile.tissue_map, labels=tile.labels)
    image, inst_map, type_map = generate_tile(seed, (size, size))
    return Arrays(image=image, inst_map=inst_map, type_map=type_map)


def _unchanged(arrays: Any, record: Any) -> Any:
    """Identity sample transform."""
    return arrays


def synthetic_dataset(n: int, seed: int, size: int, offset: int = 0, kind: str = "nuclei") -> Any:
    """``n`` lazy synthetic tiles ``tile_seed(seed, offset + i)`` of ``kind`` (see
    :data:`SYNTHETIC_KINDS`) as a ``loader`` Dataset."""
    if kind not in SYNTHETIC_KINDS:
        raise UserError(f"data.synthetic.kind '{kind}' is not one of {list(SYNTHETIC_KINDS)}")
    class_names = PATCH_CLASSES if kind == "tissue" else tuple(name for name, _ in NUCLEUS_TYPES.values())
    records = [
        Record(
            name=f"synthetic_{offset + i:04d}",
            source=Path("synthetic"),
            loader=functools.partial(_synthetic_arrays, tile_seed(seed, offset + i), size, kind),
            class_names=class_names,
        )
        for i in range(n)
    ]
    return Dataset("synthetic", Path("synthetic"), records, _unchanged)


def read_source(source: str, split: str | None = None) -> Any:
    """Samples of a data source other than ``synthetic``.

    Args:
        source: ``KIND:ROOT`` (a ``loader.read_dataset`` kind and its folder) or a patch
            folder/``.h5`` written by ``extract_patches.py``.
        split: split name or split file for ``KIND:ROOT`` sources; the group of an
            extract folder holding several.

    Raises:
        UserError: the source is neither form, or the reader refuses it.
    """
    if Path(source).exists():
        return open_patches(source, split)
    if ":" not in source:
        raise UserError(
            f"--data '{source}': expected 'synthetic', KIND:ROOT (e.g. consep_mat:/data/consep) "
            "or an existing patch folder/.h5 from extract_patches.py"
        )
    kind, root = source.split(":", 1)
    return read_dataset(kind, root, split=split)


def _field(item: Any, key: str) -> Any:
    """``item[key]`` of a dict, else the attribute ``key`` (None when absent)."""
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)


def _groups(dataset: Any) -> list[str]:
    """Source-image group of every sample: its ``group``, else its ``source`` image (patches),
    else its name. Reads records, not pixels, when the dataset keeps them."""
    if hasattr(dataset, "groups"):
        return [str(group) for group in dataset.groups]
    items = dataset.records if hasattr(dataset, "records") else dataset
    return [
        str(_field(item, "group") or _field(item, "source") or _field(item, "name") or index)
        for index, item in enumerate(items)
    ]


def split_by_group(dataset: Any, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val) holding out ``fraction`` of the source-image groups.

    Patches of one source image never straddle the split. The held-out groups are a
    seeded random choice of ``round(fraction * n_groups)`` (at least one when ``fraction > 0``
    and there are two or more groups).
    """
    groups = _groups(dataset)
    unique = sorted(set(groups))
    n_val = min(len(unique) - 1, max(1, round(fraction * len(unique)))) if fraction > 0 else 0
    rng = np.random.default_rng(seed)
    held_out = set(rng.permutation(unique)[:n_val].tolist()) if n_val > 0 else set()
    train = [i for i, group in enumerate(groups) if group not in held_out]
    val = [i for i, group in enumerate(groups) if group in held_out]
    return train, val


class Subset(Sequence):
    """The items of ``base`` at ``indices`` (picklable for DataLoader workers)."""

    def __init__(self, base: Any, indices: Sequence[int]) -> None:
        self.base = base
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.base[self.indices[index]]


def build_splits(data_cfg: dict, seed: int) -> tuple[Any, Any]:
    """Training and validation samples for the ``data`` config section.

    Raises:
        UserError: the training set is empty.
    """
    source = str(data_cfg["source"])
    if source == "synthetic":
        syn = data_cfg["synthetic"]
        kind = str(syn.get("kind", "nuclei"))
        train = synthetic_dataset(int(syn["n_train"]), int(syn["seed"]), int(syn["size"]), kind=kind)
        val = synthetic_dataset(int(syn["n_val"]), int(syn["seed"]), int(syn["size"]), offset=int(syn["n_train"]), kind=kind)
    elif data_cfg.get("val_source"):
        train = read_source(source, data_cfg.get("split"))
        val = read_source(str(data_cfg["val_source"]))
    else:
        full = read_source(source, data_cfg.get("split"))
        train_idx, val_idx = split_by_group(full, float(data_cfg.get("val_fraction") or 0.0), seed)
        train, val = Subset(full, train_idx), Subset(full, val_idx)
    if len(train) == 0:
        raise UserError(f"data source '{source}': no training samples (check the path, split and data.val_fraction)")
    if source != "synthetic":
        check_readable(val)
    return train, val


def check_readable(samples: Any) -> None:
    """Read every sample once (then let it go), so that an unreadable validation image or label
    map stops the run before training rather than at the first validation.

    Raises:
        UserError: from the reader, naming the file at fault.
    """
    for index in range(len(samples)):
        sample_dict(samples[index])


def sample_dict(sample: Any, keys: Sequence[str] = SAMPLE_KEYS) -> dict[str, Any]:
    """A sample's arrays as a dict: ``image`` (H, W, 3) uint8 and, when present, ``inst_map``,
    ``type_map`` (H, W) int32, ``labels`` (C,) int and any further ``keys``; plus ``name``."""
    out: dict[str, Any] = {NAME: _field(sample, NAME) or ""}
    for key in keys:
        value = _field(sample, key)
        if value is not None:
            out[key] = value
    return out


class ImageView(Sequence):
    """The ``image`` of each sample, read on access ((H, W, 3) uint8)."""

    def __init__(self, samples: Any) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> np.ndarray:
        return sample_dict(self.samples[index], (IMAGE,))[IMAGE]


class WithPrevious:
    """A later stage's target builder: adds the earlier stages' maps of each (un-augmented)
    sample, ``family.previous_sample_maps(image, family.previous(image))``, before the
    augmentations move them with the image; then the family's own builder runs.

    The maps of an image are computed once per process (keyed by its pixels). With the
    builder's ``cache_key`` they are cached on disk under the run's ``cache/`` like any
    ``precompute`` output.
    """

    def __init__(self, builder: Any, family: Family) -> None:
        self.builder = builder
        self.family = family
        self._inner = getattr(builder, "precompute", None)
        self._memo: dict[str, dict[str, np.ndarray]] = {}
        key = getattr(builder, "cache_key", None)
        if key is not None:
            self.cache_key = f"{key}+previous"

    def precompute(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The builder's own ``precompute`` maps (if any) and the earlier stages' (H, W) maps."""
        import hashlib

        image = np.ascontiguousarray(arrays["image"])
        digest = hashlib.sha1(image.tobytes() + str(image.shape).encode()).hexdigest()
        if digest not in self._memo:
            self._memo[digest] = self.family.previous_sample_maps(image, self.family.previous(image))
        maps = dict(self._inner(arrays)) if self._inner is not None else {}
        maps.update(self._memo[digest])
        return maps

    def __call__(self, sample: dict) -> dict[str, np.ndarray]:
        return self.builder(sample)


def build_train_dataset(family: Family, samples: Any, cfg: dict, cache_dir: Path | None = None) -> Any:
    """The training dataset: a random ``data.patch_size`` crop of each sample, then the
    ``data.augment`` pipeline (preset name or op list), then the family's target builder.

    A target builder with a ``cache_key`` (expensive per-sample maps such as weight maps)
    gets its pre-augmentation maps cached under ``cache_dir``. A later stage of a staged family
    (``family.previous`` set) gets the earlier stages' maps in its samples (:class:`WithPrevious`)."""
    spec = cfg["data"].get("augment")
    ops = list(load_augment_preset(spec) if isinstance(spec, str) else spec or [])
    patch = cfg["data"].get("patch_size")
    if patch:
        ops.insert(0, {"op": "crop", "size": [int(patch), int(patch)], "position": "random"})
    size = int(cfg["infer"]["input_size"])
    builder = family.target_builder()
    if getattr(family, "previous", None) is not None:
        builder = WithPrevious(builder, family)
    cached = cache_dir is not None and getattr(builder, "cache_key", None) is not None
    return SampleDataset(
        samples,
        augment=build_augment(ops, input_shape=(size, size)) if ops else None,
        target_builder=builder,
        seed=int(cfg["train"]["seed"]),
        cache_dir=cache_dir if cached else None,
        keys=sample_keys(family.sample_keys),
    )


class WeightedShardSampler(torch.utils.data.Sampler):
    """Indices drawn with replacement in proportion to per-sample weights, this process's shard.

    Every epoch draws ``ceil(n / replicas) * replicas`` indices from the same generator on every
    process (seeded by ``seed + epoch``), and process ``rank`` takes every ``replicas``-th one
    from ``rank``: the order depends only on (seed, epoch), as with ``DistributedSampler``.

    Args:
        weights: (n,) non-negative sampling weights of the dataset's samples, not all zero.
    """

    def __init__(self, weights: Sequence[float], num_replicas: int, rank: int, seed: int) -> None:
        self.weights = torch.as_tensor(np.asarray(weights, np.float64))
        if self.weights.ndim != 1 or not bool((self.weights >= 0).all()) or float(self.weights.sum()) <= 0:
            raise UserError(f"sampling weights must be non-negative and not all zero, got shape {tuple(self.weights.shape)}")
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = -(-len(self.weights) // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Draw the indices of ``epoch`` next."""
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.num_samples * self.num_replicas, replacement=True, generator=generator)
        return iter(drawn[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


def build_loader(dataset: Any, batch_size: int, info: DistInfo, seed: int, num_workers: int, device: torch.device,
                 weights: Sequence[float] | None = None, batch_sampler: Any = None) -> DataLoader:
    """A DataLoader over this process's shard; call :func:`set_loader_epoch` every epoch.

    The order depends only on (seed, epoch); ``batch_size`` is per process. With ``weights``
    (one per sample, the family's ``sample_weights``) samples are drawn in proportion to them
    (:class:`WeightedShardSampler`), else each epoch is a shuffled pass over the dataset. A
    ``batch_sampler`` (a family's, ``models.base.TrainingData``) replaces both and ``batch_size``.
    """
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, pin_memory=device.type == "cuda",
                          generator=torch.Generator().manual_seed(seed), worker_init_fn=seed_worker)
    if weights is not None:
        sampler = WeightedShardSampler(weights, info.world_size, info.rank, seed)
    else:
        sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        drop_last=False,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=seed_worker,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell the loader's sampler and batch sampler (those that draw per epoch) the epoch."""
    for sampler in (loader.sampler, loader.batch_sampler):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
