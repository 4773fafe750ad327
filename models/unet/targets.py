"""U-Net training targets: HoVer-Net's NP and HV maps (imported) and one-hot types.

The published code builds its targets with HoVer-Net's ``gen_targets`` on the whole 256 px
patch (input = output window) and one-hot encodes the types (SEEDS 6.3). The NP/HV part is
:class:`models.hovernet.targets.HoVerTargets` with equal input and output windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from misc.errors import UserError
from models.hovernet.targets import HoVerTargets


def check_types(type_map: np.ndarray, nr_types: int) -> None:
    """Raise :class:`UserError` when a (H, W) type map holds a type outside 0..nr_types-1
    (naming the type and the configured count)."""
    type_map = np.asarray(type_map)
    low, high = (int(type_map.min()), int(type_map.max())) if type_map.size else (0, 0)
    if low < 0 or high >= nr_types:
        bad = high if high >= nr_types else low
        raise UserError(
            f"the data holds nucleus type {bad} but model.nr_types is {nr_types} (types 0..{nr_types - 1} "
            f"incl. background); set model.nr_types to {max(high + 1, 2)} or merge the types"
        )


def sample_types(sample: dict, nr_types: int) -> np.ndarray:
    """The sample's (H, W) type map, checked against ``nr_types``.

    With ``model.nr_types: 2`` (types off: background and one nucleus class) an untyped sample
    (no ``type_map``, e.g. MoNuSeg) is unambiguous: every nucleus pixel is type 1.

    Raises:
        UserError: no ``type_map`` while more than one nucleus type is configured, or a type
            outside 0..nr_types-1.
    """
    type_map = sample.get("type_map")
    if type_map is None:
        if nr_types != 2:
            raise UserError(f"the U-Net needs nucleus types but the sample has no type_map; use typed data, or "
                            f"model.nr_types: 2 (types off) instead of {nr_types} for instance maps alone")
        return (np.asarray(sample["inst_map"]) > 0).astype(np.int32)
    check_types(type_map, nr_types)
    return np.asarray(type_map)


def one_hot_types(type_map: np.ndarray, nr_types: int) -> np.ndarray:
    """One-hot encoding of a per-pixel type map.

    Args:
        type_map: (H, W) integer types, 0 = background, at most ``nr_types - 1``.
        nr_types: channels including background.

    Returns:
        (nr_types, H, W) uint8, channel t is 1 where ``type_map == t``.

    Raises:
        UserError: a type outside 0..nr_types-1 (see :func:`check_types`).
    """
    type_map = np.asarray(type_map)
    check_types(type_map, nr_types)
    return (type_map[None] == np.arange(nr_types).reshape(-1, 1, 1)).astype(np.uint8)


@dataclass(frozen=True)
class UNetTargets:
    """Picklable target builder: one augmented sample -> network input and U-Net targets.

    Attributes:
        input_size: side of the (square) window; the network predicts the same window.
        nr_types: type channels including background.
        hv_min_area: instances with fewer pixels inside the window get no HV offsets (30 px).
        reinhard: CIELAB Reinhard target of the un-augmented image, or None (off).
    """

    input_size: int
    nr_types: int
    hv_min_area: int = 30
    reinhard: Mapping[str, Any] | None = None

    @property
    def hover(self) -> HoVerTargets:
        """HoVer-Net's builder for the same window (NP, HV, and the type indices)."""
        return HoVerTargets(
            input_size=self.input_size,
            output_size=self.input_size,
            typed=True,
            hv_min_area=self.hv_min_area,
            reinhard=self.reinhard,
        )

    def precompute(self, sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Maps of the un-augmented sample (the Reinhard-normalised image when a target is set)."""
        return self.hover.precompute(sample)

    def __call__(self, sample: dict) -> dict[str, np.ndarray]:
        """Build the arrays of one sample.

        Args:
            sample: ``{'image': (H, W, 3) uint8, 'inst_map': (H, W) int, 'type_map': (H, W) int}``,
                H, W >= ``input_size``.

        Returns:
            ``image`` (3, S, S) float32 RGB 0-255; ``np_map`` (S, S) int64 0/1; ``hv_map``
            (2, S, S) float32 in [-1, 1]; ``tp_onehot`` (nr_types, S, S) uint8; S = ``input_size``.
        """
        sample = {**sample, "type_map": sample_types(sample, self.nr_types)}
        targets = self.hover(sample)
        targets["tp_onehot"] = one_hot_types(targets.pop("tp_map"), self.nr_types)
        return targets
