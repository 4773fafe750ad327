"""The keys of a sample, defined once for the readers, the datasets, augmentation and the engine.

A sample dict holds ``image`` (H, W, 3) uint8 RGB and, when the data has them, ``inst_map``
(H, W) int32 instance ids (0 = background), ``type_map`` (H, W) int32 class per pixel and
``labels`` (C,) int image-level labels. A family whose data carries more arrays (weight maps,
marker maps, heatmaps) names them in :attr:`models.base.Family.sample_keys`; the engine reads
``sample_keys(family.sample_keys)`` from every sample, and augmentation moves every extra
(H, W) map with the image.
"""

from __future__ import annotations

from typing import Iterable

IMAGE = "image"
INST_MAP = "inst_map"
TYPE_MAP = "type_map"
LABELS = "labels"
NAME = "name"

#: (H, W) integer label maps: nearest-neighbour resampling, 0 outside the image, cast to int32.
LABEL_MAPS: tuple[str, ...] = (INST_MAP, TYPE_MAP)
#: The arrays every sample may carry, in this order.
SAMPLE_KEYS: tuple[str, ...] = (IMAGE, *LABEL_MAPS, LABELS)


def sample_keys(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """:data:`SAMPLE_KEYS` followed by a family's ``extra`` keys (without repeats, order kept)."""
    return tuple(dict.fromkeys([*SAMPLE_KEYS, *extra]))
