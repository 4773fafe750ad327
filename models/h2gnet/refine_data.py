"""The refinement stage's training data: per slide, the thumbnail, the detection heatmap and the
true tumour mask on the refinement grid, computed once (with the trained detector) and cached.

An example is what the published batch generator reads from its per-sample HDF5 (``data``
(H, W, 3), ``heatmap`` (H, W, 1), ``label`` one-hot): here ``thumbnail`` (S, S, 3) float32 RGB
0-1, ``heatmap`` (S, S) float32 and ``mask`` (S, S) uint8 (1 = tumour, 0 elsewhere, padding
included), stored as one ``.npz`` per slide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from misc.errors import UserError
from misc.io import atomic_path
from models.h2gnet.augment import Augment, augment_refine
from models.h2gnet.cascade import CascadeSettings, detect_heatmap, heatmap_on_grid, thumbnail_on_grid, truth_on_grid
from models.h2gnet.patches import TUMOUR_CLASSES
from models.h2gnet.slides import SlideLike, level0_shape

EXAMPLE_KEYS = ("thumbnail", "heatmap", "mask")


@dataclass
class RefineExample:
    """One slide on the refinement grid: ``thumbnail`` (S, S, 3) float32 0-1, ``heatmap`` (S, S)
    float32 0-1, ``mask`` (S, S) uint8 0/1."""

    thumbnail: np.ndarray
    heatmap: np.ndarray
    mask: np.ndarray

    def save(self, path: str | os.PathLike) -> None:
        """Write the example as an uncompressed ``.npz`` atomically."""
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **{key: getattr(self, key) for key in EXAMPLE_KEYS})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RefineExample":
        """Read an example written by :meth:`save` (no pickles)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(*(data[key] for key in EXAMPLE_KEYS))
        except (OSError, KeyError, ValueError) as err:
            raise UserError(f"{path}: not a cached refinement example ({err}); delete it to recompute") from None


def make_example(detector: nn.Module, slide: SlideLike, annotation: str | os.PathLike, tissue: np.ndarray,
                 settings: CascadeSettings, classes: Sequence[str] = TUMOUR_CLASSES,
                 device: str | torch.device = "cpu") -> RefineExample:
    """A slide's refinement example from the trained detector (in eval mode).

    Args:
        annotation: QuPath GeoJSON or whole-slide mask image of the tumour.
        tissue: (h, w) bool tissue mask covering the slide.
    """
    shape = level0_shape(slide)
    heatmap, step0 = detect_heatmap(detector, slide, tissue, settings, device)
    thumbnail, placement = thumbnail_on_grid(slide, settings.grid)
    heat_grid, _ = heatmap_on_grid(heatmap, step0, shape, settings.grid)
    mask = np.zeros((settings.grid, settings.grid), np.uint8)
    mask[: placement.rows, : placement.cols] = truth_on_grid(annotation, shape, placement, classes)
    return RefineExample(thumbnail, heat_grid, mask)


def cached_example(path: str | os.PathLike, compute: Callable[[], RefineExample]) -> RefineExample:
    """The example cached at ``path``, computed (and written) when absent."""
    path = Path(path)
    if path.is_file():
        return RefineExample.load(path)
    example = compute()
    example.save(path)
    return example


class RefineSamples(Dataset):
    """Augmented refinement samples.

    Args:
        examples: one per training slide.
        augment: the augmentation settings, or None for none (validation).
        seed: sample i of epoch e uses ``(seed, e, i)``.

    A sample is ``{'image': (4, S, S) float32 [R, G, B in 0-1, heatmap], 'mask': (S, S) int64}``.
    """

    def __init__(self, examples: Sequence[RefineExample], augment: Augment | None = None, seed: int = 0) -> None:
        if not examples:
            raise UserError("the refinement stage has no training slides")
        self.examples, self.augment, self.seed, self.epoch = list(examples), augment, int(seed), 0

    def __len__(self) -> int:
        return len(self.examples)

    def set_epoch(self, epoch: int) -> None:
        """Draw augmentations of epoch ``epoch``."""
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        example = self.examples[i]
        rgb, heat, mask = example.thumbnail, example.heatmap, example.mask
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, int(i)])
            rgb, heat, mask = augment_refine(rgb, heat, mask, rng, self.augment)
        image = np.concatenate([rgb, heat[..., None]], axis=2).transpose(2, 0, 1)
        return {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))}
