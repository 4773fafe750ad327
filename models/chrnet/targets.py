"""CHR-Net training targets: eroded instances, marker (distance) map, type and grouped type maps.

As the published label pipeline (``Gen_BDist_Map.ipynb`` then ``GenInstanceUnetMap``):

- the marker map is computed on the un-augmented sample (:meth:`CHRNetTargets.precompute`) and
  moved by the geometric augmentations with the labels (nearest neighbour);
- after augmentation every instance is eroded by a 3x3 cross so touching nuclei separate, and
  the type and marker maps are zeroed outside the eroded instances;
- the type map gives the final (fine) classes and, through each HRFE's grouping, the two
  cross-category maps (ccRCC: [G1 u G2, G3, Endo] and [G1, G2 u G3, Endo]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from metrics.overlap import dense_ids
from misc.errors import UserError
from models.hovernet.targets import centre_crop

#: Marker values inside a nucleus span [MARKER_LOW, 1]; background is 0.
MARKER_LOW = 0.1


def grouping_lookup(grouping: Sequence[Sequence[int]], nr_types: int, where: str) -> np.ndarray:
    """Lookup table fine class -> group for one HRFE.

    Args:
        grouping: list of groups, each a list of fine class ids in 1..nr_types-1; group ``g``
            (0-based) becomes grouped class ``g + 1`` (0 stays background).
        nr_types: fine classes including background.
        where: the config key, for messages (e.g. ``model.groupings[0]``).

    Returns:
        (nr_types,) int64: ``lut[c]`` = grouped class of fine class c, ``lut[0] = 0``.

    Raises:
        UserError: a group is empty, a class is out of range, repeated or missing (the message
            names the class).
    """
    if not isinstance(grouping, (list, tuple)) or not grouping:
        raise UserError(f"{where} must be a non-empty list of groups of class ids, got {grouping!r}")
    lut = np.full(nr_types, -1, np.int64)
    lut[0] = 0
    for index, group in enumerate(grouping):
        if not isinstance(group, (list, tuple)) or not group:
            raise UserError(f"{where}[{index}] must be a non-empty list of class ids, got {group!r}")
        for cls in group:
            if not isinstance(cls, int) or isinstance(cls, bool) or not 1 <= cls < nr_types:
                raise UserError(f"{where}[{index}] holds class {cls!r}; classes are 1..{nr_types - 1} "
                                f"(model.nr_types {nr_types} includes background)")
            if lut[cls] != -1:
                raise UserError(f"{where} puts class {cls} in more than one group; each class goes in exactly one")
            lut[cls] = index + 1
    missing = [c for c in range(1, nr_types) if lut[c] == -1]
    if missing:
        raise UserError(f"{where} misses class {missing[0]}"
                        + (f" (and {missing[1:]})" if len(missing) > 1 else "")
                        + f"; every class 1..{nr_types - 1} must be in exactly one group")
    return lut


def grouping_lookups(groupings: Sequence[Sequence[Sequence[int]]], nr_types: int) -> list[np.ndarray]:
    """:func:`grouping_lookup` of each HRFE's grouping (``model.groupings``); exactly two."""
    if not isinstance(groupings, (list, tuple)) or len(groupings) != 2:
        raise UserError(f"model.groupings must list two groupings (one per HRFE), got {groupings!r}")
    return [grouping_lookup(g, nr_types, f"model.groupings[{i}]") for i, g in enumerate(groupings)]


def erode_instances(inst_map: np.ndarray) -> np.ndarray:
    """Erode every instance by a 3x3 cross: a pixel stays when its 4 neighbours have its id.

    Equivalent to the published per-instance ``cv2.erode`` with the cross kernel (whose border
    value keeps pixels on the image edge); touching instances lose their contact pixels.

    Args:
        inst_map: (H, W) integer ids, 0 = background.

    Returns:
        (H, W) int32 eroded map (same ids).
    """
    inst = np.asarray(inst_map).astype(np.int32, copy=False)
    padded = np.pad(inst, 1, mode="edge")
    keep = inst > 0
    for dr, dc in ((0, 1), (2, 1), (1, 0), (1, 2)):
        keep &= padded[dr : dr + inst.shape[0], dc : dc + inst.shape[1]] == inst
    return np.where(keep, inst, 0).astype(np.int32)


def _touching_pairs(dense: np.ndarray) -> np.ndarray:
    """(K, 2) int64 unique pairs of different non-zero ids that are 4-neighbours."""
    pairs = []
    for a, b in ((dense[:, :-1], dense[:, 1:]), (dense[:-1, :], dense[1:, :])):
        touch = (a != b) & (a > 0) & (b > 0)
        pairs.append(np.stack([a[touch], b[touch]], 1))
    both = np.concatenate(pairs)
    both = np.concatenate([both, both[:, ::-1]])
    return np.unique(both, axis=0) if both.size else both.reshape(0, 2)


def _colour_instances(n: int, pairs: np.ndarray) -> np.ndarray:
    """Greedy colouring of ids 1..n so that touching ids differ; (n + 1,) int64, 0 -> 0."""
    colour = np.zeros(n + 1, np.int64)
    if n == 0:
        return colour
    starts = np.searchsorted(pairs[:, 0], np.arange(n + 2))
    for ident in range(1, n + 1):  # one pass over instances (not pixels)
        used = set(colour[pairs[starts[ident] : starts[ident + 1], 1]].tolist())
        colour[ident] = next(c for c in range(1, len(used) + 2) if c not in used)
    return colour


def nucleus_distance(inst_map: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Euclidean distance of every nuclear pixel to the nearest pixel outside its nucleus.

    Equals ``distance_transform_edt(inst_map == i)`` of each nucleus ``i``, computed with one
    whole-map transform per colour of a colouring of touching nuclei (the nearest pixel outside
    a nucleus is always 4-adjacent to it, so it is background or a differently coloured
    neighbour).

    Returns:
        ``(distance, dense, n)``: (H, W) float64 distances (0 on background), the (H, W) int64
        map renumbered to 1..n and n.
    """
    dense, n = dense_ids(np.asarray(inst_map))
    distance = np.zeros(dense.shape, np.float64)
    colour = _colour_instances(n, _touching_pairs(dense))
    colour_map = colour[dense]
    for k in range(1, int(colour.max(initial=0)) + 1):
        mask = colour_map == k
        if mask.all():  # one nucleus filling the window: no pixel outside to measure from
            distance[mask] = 1.0
            continue
        distance[mask] = ndimage.distance_transform_edt(mask)[mask]
    return distance, dense, n


def marker_map(inst_map: np.ndarray) -> np.ndarray:
    """Per-nucleus distance transform min-max normalised to [0.1, 1] (``Gen_BDist_Map``).

    ``m = 0.9 (d - dmin) / (dmax - dmin) + 0.1`` inside each nucleus with d from
    :func:`nucleus_distance`; a nucleus whose distances are all equal (e.g. 1 px) gets 1
    (the published code divides by zero there); background 0.

    Args:
        inst_map: (H, W) integer ids, 0 = background.

    Returns:
        (H, W) float32 in {0} u [0.1, 1].
    """
    distance, dense, n = nucleus_distance(inst_map)
    if n == 0:
        return np.zeros(dense.shape, np.float32)
    index = np.arange(1, n + 1)
    low = np.concatenate([[0.0], ndimage.minimum(distance, dense, index)])
    high = np.concatenate([[0.0], ndimage.maximum(distance, dense, index)])
    span = (high - low)[dense]
    flat = span <= 0
    scaled = (1.0 - MARKER_LOW) * (distance - low[dense]) / np.where(flat, 1.0, span) + MARKER_LOW
    scaled = np.where(flat, 1.0, scaled)
    return np.where(dense > 0, scaled, 0.0).astype(np.float32)


def check_types(type_map: np.ndarray, nr_types: int) -> np.ndarray:
    """``type_map`` as int64 after checking its classes fit ``model.nr_types``.

    Raises:
        UserError: a negative class or one above ``nr_types - 1``.
    """
    type_map = np.asarray(type_map).astype(np.int64)
    if type_map.size and (type_map.min() < 0 or type_map.max() >= nr_types):
        bad = int(type_map.max()) if type_map.max() >= nr_types else int(type_map.min())
        raise UserError(f"the label file holds class id {bad} but model.nr_types is {nr_types} "
                        f"(classes 0..{nr_types - 1}, 0 = background); set model.nr_types and model.groupings")
    return type_map


def sample_types(sample: dict, nr_types: int) -> np.ndarray:
    """The sample's (H, W) int64 type map, checked against ``nr_types``.

    With ``model.nr_types: 2`` (types off: background and one nucleus class, groupings
    ``[[[1]], [[1]]]``) an untyped sample (no ``type_map``, e.g. MoNuSeg) is unambiguous: every
    nucleus pixel is class 1.

    Raises:
        UserError: no ``type_map`` while more than one class is configured, or a class outside
            0..nr_types-1.
    """
    if sample.get("type_map") is None:
        if nr_types != 2:
            raise UserError(f"CHR-Net needs nucleus types but the sample has no type_map; use a typed data set, or "
                            f"model.nr_types: 2 with model.groupings [[[1]], [[1]]] (types off) instead of {nr_types}")
        return (np.asarray(sample["inst_map"]) > 0).astype(np.int64)
    return check_types(sample["type_map"], nr_types)


@dataclass(frozen=True)
class CHRNetTargets:
    """Picklable target builder: one augmented sample -> network input and CHR-Net targets.

    Attributes:
        input_size: side of the image window fed to the network (262 published).
        output_size: side of the predicted window (``input_size - 6``).
        nr_types: fine classes including background.
        lookups: the two HRFE lookup tables from :func:`grouping_lookups` (as tuples).
        reinhard: CIELAB target of Reinhard normalisation of the un-augmented image, or None.
    """

    input_size: int
    output_size: int
    nr_types: int
    lookups: tuple[tuple[int, ...], tuple[int, ...]]
    reinhard: Mapping[str, Any] | None = field(default=None)

    def precompute(self, sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Maps of the un-augmented sample: ``marker_map`` (H, W) float32 (moved with the labels
        by the augmentations; a marker map the reader supplies, e.g. from the published
        ``Gen_BDist_Map``, is kept) and, with a Reinhard target, the normalised ``image``."""
        supplied = sample.get("marker_map")
        marker = marker_map(np.asarray(sample["inst_map"])) if supplied is None else np.asarray(supplied, np.float32)
        maps = {"marker_map": marker}
        if self.reinhard is not None:
            from loader.colour import reinhard_normalise

            maps["image"] = reinhard_normalise(np.asarray(sample["image"]), self.reinhard)
        return maps

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Build the arrays of one sample.

        Args:
            sample: ``image`` (H, W, 3) uint8, ``inst_map`` and ``type_map`` (H, W) int, and
                ``marker_map`` (H, W) float when the dataset ran :meth:`precompute` (else it
                is computed here); H, W >= ``input_size``.

        Returns:
            ``image`` (3, in, in) float32 RGB 0-255; at the output window (out, out):
            ``np_map`` int64 0/1, ``marker_map`` float32, ``tp_map``, ``hrfe1_map``,
            ``hrfe2_map`` int64, all zero outside the eroded instances.
        """
        image, inst_map = np.asarray(sample["image"]), np.asarray(sample["inst_map"])
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != inst_map.shape:
            raise UserError(f"sample image {image.shape} and inst_map {inst_map.shape} must be (H, W, 3) and (H, W)")
        if min(inst_map.shape) < self.input_size:
            raise UserError(f"training patch {inst_map.shape} is smaller than infer.input_size {self.input_size}; "
                            f"raise data.patch_size to at least {self.input_size}")
        types = sample_types(sample, self.nr_types)
        marker = sample.get("marker_map")
        marker = marker_map(inst_map) if marker is None else np.asarray(marker, np.float32)
        out = (self.output_size, self.output_size)
        eroded = centre_crop(erode_instances(inst_map), out)
        inside = eroded > 0
        tp = np.where(inside, centre_crop(types, out), 0)
        window = (self.input_size, self.input_size)
        return {
            "image": np.ascontiguousarray(np.moveaxis(centre_crop(image, window), -1, 0), dtype=np.float32),
            "np_map": inside.astype(np.int64),
            "marker_map": np.where(inside, centre_crop(marker, out), 0.0).astype(np.float32),
            "tp_map": tp,
            "hrfe1_map": np.asarray(self.lookups[0], np.int64)[tp],
            "hrfe2_map": np.asarray(self.lookups[1], np.int64)[tp],
        }
