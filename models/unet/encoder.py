"""SE-ResNeXt (32x4d) encoder with a stride-1 stem and no max-pool, and its ImageNet weights.

The residual units are Cadene's ``SEResNeXtBottleneck`` (Cadene/pretrained-models.pytorch,
``pretrainedmodels/models/senet.py``; Hu et al., "Squeeze-and-Excitation Networks"):
1x1 conv -> BN-ReLU -> 3x3 grouped conv (the unit's stride) -> BN-ReLU -> 1x1 conv -> BN ->
squeeze-and-excitation -> + shortcut -> ReLU; the shortcut of a group's first unit is a 1x1
conv (the group's stride) + BN. Group widths follow Cadene: ``planes`` 64, 128, 256, 512,
inner width ``floor(planes * base_width / 64) * groups`` (32x4d: 128, 256, 512, 1024), output
``4 * planes``, SE reduction 16.

As in the CoNIC "winning approach" (SEEDS 6.2) the 7x7 stem conv has stride 1 and no
max-pool follows, so the four groups give maps at 1, 1/2, 1/4 and 1/8 of the input.

Parameter names and Cadene's (the published ImageNet files ``se_resnext50_32x4d-a260b3a4.pth``
and ``se_resnext101_32x4d-3b2fe3d8.pth`` store a plain state dict in Cadene's names):

=============================  ==========================================
ours (under ``encoder.``)      Cadene
=============================  ==========================================
``stem.conv``                  ``layer0.conv1``
``stem.bn``                    ``layer0.bn1``
``groups.{g}.{u}.<rest>``      ``layer{g + 1}.{u}.<rest>`` (g = 0..3)
(dropped)                      ``last_linear.weight``, ``last_linear.bias``
=============================  ==========================================

``<rest>`` is unchanged (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``conv3``, ``bn3``,
``se_module.fc1``, ``se_module.fc2``, ``downsample.0``, ``downsample.1``). The 1000-class
``last_linear`` classifier is the only Cadene entry without a counterpart.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from misc.errors import UserError
from models.weights import read_state_dict

#: Residual units per group of the published variants.
VARIANT_UNITS: dict[str, tuple[int, int, int, int]] = {
    "se_resnext50_32x4d": (3, 4, 6, 3),
    "se_resnext101_32x4d": (3, 4, 23, 3),
}
STEM_CHANNELS = 64
GROUP_PLANES = (64, 128, 256, 512)
EXPANSION = 4
CARDINALITY = 32
BASE_WIDTH = 4
SE_REDUCTION = 16
STEM_KSIZE = 7
#: Cadene classifier entries that the encoder has no counterpart for.
CLASSIFIER_PREFIX = "last_linear."


class SEModule(nn.Module):
    """Squeeze-and-excitation: global average pool -> 1x1 conv (C/r) -> ReLU -> 1x1 conv (C)
    -> sigmoid, multiplying the input channels (Cadene's ``SEModule``)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W) channel-reweighted."""
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(scale))))
        return x * scale


class SEResNeXtUnit(nn.Module):
    """One ``SEResNeXtBottleneck``: the stride is on the grouped 3x3 conv."""

    def __init__(
        self, in_ch: int, planes: int, groups: int, base_width: int, reduction: int, stride: int, project: bool
    ) -> None:
        super().__init__()
        width = math.floor(planes * base_width / 64) * groups
        out_ch = planes * EXPANSION
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.se_module = SEModule(out_ch, reduction)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
            if project
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_ch, H, W) -> (N, 4 * planes, ceil(H / stride), ceil(W / stride))."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.se_module(self.bn3(self.conv3(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


def group_planes(width: float) -> list[int]:
    """``planes`` of the four groups at channel multiplier ``width`` (1.0: 64, 128, 256, 512),
    each a multiple of 16 so that narrow groups keep whole ResNeXt cardinality groups."""
    return [max(16, 16 * round(planes * width / 16)) for planes in GROUP_PLANES]


class SEResNeXtEncoder(nn.Module):
    """SE-ResNeXt encoder, stride-1 stem, four groups of units.

    Args:
        units: residual units per group (``se_resnext50_32x4d`` 3, 4, 6, 3; ``-101`` 3, 4, 23, 3).
        width: multiplier of the stem channels and of every group's ``planes`` (1.0 = published;
            ``planes`` rounded to multiples of 16).
        groups: ResNeXt cardinality of the 3x3 convs (published 32).
        base_width: channels per cardinality group at ``planes`` 64 (published 4).
        reduction: squeeze-and-excitation reduction (published 16).

    ``forward(x)`` takes (N, 3, H, W) float (already scaled, H and W multiples of 8) and
    returns ``[d0, d1, d2, d3]``: (N, 4 * planes_g, H / 2^g, W / 2^g) for g = 0..3
    (256, 512, 1024, 2048 channels at width 1.0).
    """

    def __init__(
        self,
        units: Sequence[int] = VARIANT_UNITS["se_resnext50_32x4d"],
        width: float = 1.0,
        groups: int = CARDINALITY,
        base_width: int = BASE_WIDTH,
        reduction: int = SE_REDUCTION,
    ) -> None:
        super().__init__()
        _check_options(units, width, groups, base_width, reduction)
        stem_ch = max(8, round(STEM_CHANNELS * width))
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(3, stem_ch, STEM_KSIZE, stride=1, padding=STEM_KSIZE // 2, bias=False))
        self.stem.add_module("bn", nn.BatchNorm2d(stem_ch))
        self.stem.add_module("relu", nn.ReLU(inplace=True))
        self.out_channels: list[int] = []
        stages = []
        in_ch = stem_ch
        for index, (planes, nr_units) in enumerate(zip(group_planes(width), units)):
            stride = 1 if index == 0 else 2
            stages.append(
                nn.Sequential(
                    *(
                        SEResNeXtUnit(
                            in_ch if unit == 0 else planes * EXPANSION,
                            planes,
                            groups,
                            base_width,
                            reduction,
                            stride if unit == 0 else 1,
                            project=unit == 0,
                        )
                        for unit in range(int(nr_units))
                    )
                )
            )
            in_ch = planes * EXPANSION
            self.out_channels.append(in_ch)
        self.groups = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) -> the four group outputs at strides 1, 2, 4, 8 (see class docstring)."""
        x = self.stem(x)
        features = []
        for group in self.groups:
            x = group(x)
            features.append(x)
        return features


def _check_options(units: Sequence[int], width: float, groups: int, base_width: int, reduction: int) -> None:
    """Raise :class:`UserError` for options no SE-ResNeXt can have."""
    if len(units) != 4 or any(int(count) < 1 for count in units):
        raise UserError(
            f"model.encoder.units must be 4 positive unit counts (se_resnext50_32x4d: [3, 4, 6, 3], "
            f"se_resnext101_32x4d: [3, 4, 23, 3]), got {list(units)}"
        )
    if not width > 0:
        raise UserError(f"model.encoder.width must be > 0 (1.0 = published widths), got {width}")
    for key, value in (("groups", groups), ("base_width", base_width), ("reduction", reduction)):
        if int(value) < 1:
            raise UserError(f"model.encoder.{key} must be a positive integer, got {value}")


_CADENE_TO_OURS = (
    (re.compile(r"^layer0\.conv1\."), "stem.conv."),
    (re.compile(r"^layer0\.bn1\."), "stem.bn."),
    (re.compile(r"^layer([1-4])\."), lambda m: f"groups.{int(m.group(1)) - 1}."),
)


def cadene_to_ours(name: str) -> str | None:
    """Our encoder parameter name for a Cadene SE-ResNeXt state-dict name (see the module table).

    Returns:
        The name under :class:`SEResNeXtEncoder` (without ``encoder.``), None for the
        ``last_linear`` classifier, or ``name`` unchanged when no rule applies (a key of
        another architecture, reported by :func:`load_cadene_state`).
    """
    if name.startswith(CLASSIFIER_PREFIX):
        return None
    for pattern, replacement in _CADENE_TO_OURS:
        if pattern.match(name):
            return pattern.sub(replacement, name, count=1)
    return name


def from_cadene_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Cadene SE-ResNeXt state dict in our encoder's names (``module.`` prefixes removed,
    the classifier dropped)."""
    out = {}
    for name, value in state.items():
        ours = cadene_to_ours(name.removeprefix("module."))
        if ours is not None:
            out[ours] = value
    return out


def load_cadene_state(encoder: SEResNeXtEncoder, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a Cadene SE-ResNeXt state dict into ``encoder`` with ``strict=True``.

    Raises:
        UserError: a name or shape differs from the encoder's (naming the first such key in
            the file's order, and the encoder it would fit).
    """
    mapped = from_cadene_state(state)
    expected = encoder.state_dict()
    for name, value in mapped.items():
        if name not in expected:
            raise UserError(
                f"{source}: '{name}' is not a parameter of the SE-ResNeXt encoder (units "
                f"{[len(g) for g in encoder.groups]}); give Cadene's se_resnext50_32x4d or se_resnext101_32x4d "
                "weights matching model.encoder.units"
            )
        if tuple(value.shape) != tuple(expected[name].shape):
            raise UserError(
                f"{source}: '{name}' has shape {tuple(value.shape)} but the encoder's is {tuple(expected[name].shape)}; "
                "the file is another architecture or model.encoder.width/groups differ from the published 1.0/32"
            )
    missing = [name for name in expected if name not in mapped and not name.endswith("num_batches_tracked")]
    if missing:
        raise UserError(
            f"{source}: no weights for '{missing[0]}' ({len(missing)} encoder entries missing); the file is "
            "a shallower network than model.encoder.units"
        )
    encoder.load_state_dict(mapped, strict=True)


def load_pretrained(encoder: SEResNeXtEncoder, path: str | Path) -> None:
    """Load Cadene ImageNet weights from a local file (read with ``weights_only=True``).

    Raises:
        UserError: the file is missing, unreadable, not a state dict or of another architecture.
    """
    state = read_state_dict(path, "model.pretrained (Cadene's se_resnext*_32x4d .pth, supplied by you)")
    load_cadene_state(encoder, state, str(path))
