"""HoVer-Net training targets: nuclear pixels (NP), horizontal/vertical offsets (HV), types (TP).

HV maps are computed on the full augmented patch and only then centre-cropped, so an
instance cut by the crop keeps the offsets to its true centre of mass. With a Reinhard target
the un-augmented image is colour-normalised first (whole-sample statistics, as at inference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from skimage.measure import label as label_components

from loader.colour import reinhard_normalise
from misc.errors import UserError


def split_disconnected(inst_map: np.ndarray) -> np.ndarray:
    """Give every 4-connected piece of every instance its own id.

    Mirror padding during augmentation duplicates instances under the same id; the
    pieces must be separate instances before centres of mass are taken.

    Args:
        inst_map: (H, W) integer instance map, 0 = background.

    Returns:
        (H, W) int32 map, ids 1..N numbered in raster order of each piece's first pixel.
    """
    return label_components(np.asarray(inst_map), background=0, connectivity=1).astype(np.int32)


def centre_crop(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop of the first two axes of ``array`` to ``size = (h, w)``.

    The top/left offset is ``floor((H - h) / 2)``, as HoVer-Net's ``cropping_center``.
    """
    height, width = array.shape[:2]
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    if top < 0 or left < 0:
        raise UserError(f"cannot centre-crop an array of shape {array.shape[:2]} to {tuple(size)}")
    return array[top : top + size[0], left : left + size[1]]


def hv_map(inst_map: np.ndarray) -> np.ndarray:
    """Horizontal and vertical offsets of each pixel to its instance's centre of mass.

    For each instance the centre of mass is rounded half up to a pixel; x = column − cx
    and y = row − cy; on each axis the negative side is divided by its largest magnitude and
    the positive side by its largest value, so each side spans [-1, 0] and [0, 1].

    Args:
        inst_map: (H, W) integer instance map, 0 = background; every id is one instance
            (run :func:`split_disconnected` first when ids may be duplicated).

    Returns:
        (2, H, W) float32: channel 0 = horizontal (x), channel 1 = vertical (y); 0 on background.
    """
    inst_map = np.asarray(inst_map)
    hv = np.zeros((2, *inst_map.shape), np.float32)
    foreground = inst_map > 0
    if not foreground.any():
        return hv
    labels = inst_map[foreground].astype(np.int64)
    rows, cols = np.nonzero(foreground)
    nr_labels = int(labels.max()) + 1
    area = np.maximum(np.bincount(labels, minlength=nr_labels), 1)
    for channel, coords in enumerate((cols, rows)):
        centre = np.floor(np.bincount(labels, weights=coords, minlength=nr_labels) / area + 0.5)
        low = np.full(nr_labels, np.iinfo(np.int64).max)
        high = np.full(nr_labels, np.iinfo(np.int64).min)
        np.minimum.at(low, labels, coords)
        np.maximum.at(high, labels, coords)
        offset = coords - centre[labels]
        neg_scale = np.maximum(centre - low, 1.0)[labels]
        pos_scale = np.maximum(high - centre, 1.0)[labels]
        hv[channel][foreground] = np.where(offset < 0, offset / neg_scale, offset / pos_scale)
    return hv


def large_instance_mask(inst_map: np.ndarray, min_area: int) -> np.ndarray:
    """(H, W) bool mask of pixels of instances with at least ``min_area`` pixels in ``inst_map``."""
    counts = np.bincount(inst_map.ravel())
    keep = counts >= min_area
    keep[0] = False
    return keep[inst_map]


@dataclass(frozen=True)
class HoVerTargets:
    """Picklable target builder: one augmented sample → network input and HoVer-Net targets.

    Attributes:
        input_size: side of the image window fed to the network (270 original, 256 fast).
        output_size: side of the window the network predicts (80 original, 164 fast).
        typed: whether to emit ``tp_map`` (the model has a type branch).
        hv_min_area: instances with fewer pixels inside the output window get no HV
            offsets (HoVer-Net: 30 px at 40x); they stay in ``np_map``.
        reinhard: CIELAB ``{'mean': [L, a, b], 'std': [L, a, b]}`` target of Reinhard colour
            normalisation of the un-augmented image (:meth:`precompute`), or None.
    """

    input_size: int
    output_size: int
    typed: bool = False
    hv_min_area: int = 30
    reinhard: Mapping[str, Any] | None = None

    def precompute(self, sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Maps of the un-augmented sample: the Reinhard-normalised ``image`` (H, W, 3) uint8
        when a target is set, else nothing."""
        if self.reinhard is None:
            return {}
        return {"image": reinhard_normalise(np.asarray(sample["image"]), self.reinhard)}

    def __call__(self, sample: dict) -> dict[str, np.ndarray]:
        """Build the arrays of one sample.

        Args:
            sample: ``{'image': (H, W, 3) uint8, 'inst_map': (H, W) int, 'type_map': (H, W) int}``
                with H, W >= ``input_size`` (``type_map`` only needed when ``typed``).

        Returns:
            ``image`` (3, input, input) float32 RGB in 0-255; ``np_map`` (out, out) int64 0/1;
            ``hv_map`` (2, out, out) float32 in [-1, 1]; ``tp_map`` (out, out) int64 when typed.
        """
        image, inst_map = np.asarray(sample["image"]), np.asarray(sample["inst_map"])
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != inst_map.shape:
            raise UserError(
                f"sample image {image.shape} and inst_map {inst_map.shape} must be (H, W, 3) and (H, W)"
            )
        if min(inst_map.shape) < self.input_size:
            raise UserError(
                f"training patch {inst_map.shape} is smaller than infer.input_size {self.input_size}; "
                f"raise data.patch_size to at least {self.input_size}"
            )
        out = (self.output_size, self.output_size)
        pieces = split_disconnected(inst_map)
        hv = centre_crop(np.moveaxis(hv_map(pieces), 0, -1), out)
        cropped = centre_crop(pieces, out)
        hv = np.where(large_instance_mask(cropped, self.hv_min_area)[..., None], hv, 0.0)
        targets = {
            "image": np.ascontiguousarray(
                np.moveaxis(centre_crop(image, (self.input_size, self.input_size)), -1, 0), dtype=np.float32
            ),
            "np_map": (cropped > 0).astype(np.int64),
            "hv_map": np.ascontiguousarray(np.moveaxis(hv, -1, 0), dtype=np.float32),
        }
        if self.typed:
            if sample.get("type_map") is None:
                raise UserError("model.nr_types > 0 but the sample has no type_map; set model.nr_types: 0")
            targets["tp_map"] = centre_crop(np.asarray(sample["type_map"]), out).astype(np.int64)
        return targets
