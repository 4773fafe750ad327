"""The HoVer-Net network: a pre-activation ResNet-50 encoder and one dense decoder per branch.

Architecture as published (Graham, Vu et al., MedIA 2019; vqdang/hover_net ``models/hovernet/
net_desc.py`` and ``net_utils.py``), module names cleaner than the published ones (the mapping
between the two lives in :mod:`models.hovernet.checkpoint`):

- ``stem``: 7x7 conv (stride 1, no max-pool) + BN + ReLU; valid in ``original`` mode, padded
  by 3 ("same") in ``fast`` mode.
- ``encoder.0`` .. ``encoder.3``: pre-activation bottleneck groups of 3, 4, 6, 3 units
  (1x1 -> 3x3 -> 1x1; the stride-2 3x3 convs of groups 1-3 use TensorFlow "same" padding,
  0 before and 1 after on even sides); each group ends with BN + ReLU.
- ``bottleneck``: 1x1 conv 2048 -> 1024 (the published ``conv_bot``).
- ``decoders.np`` / ``decoders.hv`` / ``decoders.tp``: nearest 2x upsampling summed with the
  centre-cropped encoder maps; ``up3`` and ``up2`` are valid k x k conv -> dense block (8 / 4
  units of BN-ReLU-1x1(128)-BN-ReLU-kxk(32, groups 4), valid) -> BN-ReLU -> 1x1 conv; ``up1``
  is a "same" k x k conv; ``head`` is BN-ReLU-1x1 conv with bias.
- ``decoders.shared`` (option, not published): one decoder for all branches whose head gives
  the branches' logits stacked (np, hv, tp), split after it; about a third less compute at
  the CPU widths, where the decoders dominate.

The mode (window sizes, decoder kernel and padding) is fixed once at construction by a
:class:`Geometry`; nothing else in the network branches on it. Besides the two published
modes, ``same`` is fast mode with every decoder conv zero-padded ("same"), so the output
window equals the input window (256 -> 256 px): not a published network, but the same
parameters and 2.4x the supervised pixels per training window for CPU budgets.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import nn

from misc.errors import UserError

DEFAULT_UNITS = (3, 4, 6, 3)
ENCODER_MID_CHANNELS = (64, 128, 256, 512)
STEM_CHANNELS = 64
BOTTLENECK_EXPANSION = 4
DENSE_BOTTLENECK_CHANNELS = 128
DENSE_GROWTH = 32
DENSE_GROUPS = 4
UP3_CHANNELS, UP3_DENSE_UNITS = 256, 8
UP2_CHANNELS, UP2_DENSE_UNITS = 128, 4
UP1_CHANNELS = 64
SHARED_DECODER = "shared"
STEM_KSIZE = 7
ENCODER_DOWNSAMPLING = 8
BN_EPS = 1e-5


@dataclass(frozen=True)
class Geometry:
    """Window geometry of one HoVer-Net mode (sides in pixels).

    Attributes:
        mode: ``'original'``, ``'fast'`` or ``'same'``.
        input_size: the published input window side (270 / 256).
        decoder_ksize: kernel side of the decoders' convolutions (5 / 3).
        stem_padding: zero padding on each side of the 7x7 stem conv (0 = valid / 3 = same).
        decoder_padding: zero padding on each side of the decoders' k x k convs (0 = valid as
            published; ``decoder_ksize // 2`` = same, output window = input window).
    """

    mode: str
    input_size: int
    decoder_ksize: int
    stem_padding: int
    decoder_padding: int = 0

    @property
    def output_size(self) -> int:
        """Output window side for the published input window (80 / 164; 256 in ``same`` mode)."""
        return self.output_size_for(self.input_size)

    @property
    def min_input_size(self) -> int:
        """Smallest valid input side: 8 px less per 8 px of output above 0 (198 / 96 / 8)."""
        return self.input_size - ENCODER_DOWNSAMPLING * ((self.output_size - 1) // ENCODER_DOWNSAMPLING)

    def output_size_for(self, input_size: int) -> int:
        """Output window side for an input window side.

        Valid inputs are ``input_size + 8k`` (the encoder halves three times and every
        summed skip must match the upsampled map exactly) with a positive output.

        Raises:
            UserError: ``input_size`` is not a valid input side for this mode.
        """
        stem_side = input_size - (STEM_KSIZE - 1 - 2 * self.stem_padding)
        up2_side = self._up2_side(stem_side)
        if stem_side % ENCODER_DOWNSAMPLING or up2_side <= 0:
            raise UserError(
                f"HoVer-Net '{self.mode}' mode cannot take an input side of {input_size} px: valid sides are "
                f"{self.input_size} + 8k px and at least {self.min_input_size} px "
                f"(the published window {self.input_size} gives an output of {self.output_size})"
            )
        return 2 * up2_side

    def _up2_side(self, stem_side: int) -> int:
        """Side of the ``up2`` decoder output for a stem output side (<= 0: too small)."""
        dense_loss = self.decoder_ksize - 1 - 2 * self.decoder_padding
        up3_side = 2 * (stem_side // ENCODER_DOWNSAMPLING) - dense_loss * (1 + UP3_DENSE_UNITS)
        return 2 * up3_side - dense_loss * (1 + UP2_DENSE_UNITS)


GEOMETRIES: dict[str, Geometry] = {
    "original": Geometry(mode="original", input_size=270, decoder_ksize=5, stem_padding=0),
    "fast": Geometry(mode="fast", input_size=256, decoder_ksize=3, stem_padding=3),
    "same": Geometry(mode="same", input_size=256, decoder_ksize=3, stem_padding=3, decoder_padding=1),
}


def geometry_for(mode: str) -> Geometry:
    """The :class:`Geometry` of a mode name.

    Raises:
        UserError: unknown mode.
    """
    if mode not in GEOMETRIES:
        raise UserError(f"unknown HoVer-Net mode '{mode}' (model.mode must be one of {sorted(GEOMETRIES)})")
    return GEOMETRIES[mode]


def tf_same_pad(x: torch.Tensor, ksize: int, stride: int) -> torch.Tensor:
    """Zero-pad an (N, C, H, W) map as TensorFlow's "same" padding does before a conv.

    Each side gets ``max((ceil(n / stride) - 1) * stride + ksize - n, 0)`` pixels in total,
    the smaller half before and the larger half after (so a stride-2 3x3 conv on an even side
    pads 0 before and 1 after).
    """
    pads = []
    for side in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(side / stride) - 1) * stride + ksize - side, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def centre_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre crop of an (N, C, H, W) map to (N, C, height, width); extra row/col go to the end."""
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling of an (N, C, H, W) map (tensorpack FixedUnPooling)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


class ResidualUnit(nn.Module):
    """Pre-activation bottleneck unit: [BN-ReLU] 1x1 -> BN-ReLU 3x3 -> BN-ReLU 1x1 (residual branch).

    The first unit of a group has no pre-activation (the previous group ends with BN-ReLU).
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int, preact: bool) -> None:
        super().__init__()
        self.stride = stride
        self.preact_bn = nn.BatchNorm2d(in_ch, eps=BN_EPS) if preact else None
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_ch, eps=BN_EPS)
        self.conv2 = nn.Conv2d(mid_ch, mid_ch, 3, stride=stride, padding=1 if stride == 1 else 0, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_ch, eps=BN_EPS)
        self.conv3 = nn.Conv2d(mid_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_ch, H, W) -> residual (N, out_ch, ceil(H / stride), ceil(W / stride))."""
        if self.preact_bn is not None:
            x = F.relu(self.preact_bn(x))
        x = F.relu(self.bn1(self.conv1(x)))
        if self.stride > 1:
            x = tf_same_pad(x, 3, self.stride)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.conv3(x)


class ResidualGroup(nn.Module):
    """A group of pre-activation bottleneck units closed by BN-ReLU (published ``ResidualBlock``)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, nr_units: int, stride: int) -> None:
        super().__init__()
        self.units = nn.ModuleList(
            ResidualUnit(in_ch if idx == 0 else out_ch, mid_ch, out_ch, stride if idx == 0 else 1, preact=idx > 0)
            for idx in range(nr_units)
        )
        needs_projection = in_ch != out_ch or stride != 1
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False) if needs_projection else None
        self.out_bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)

    def forward(self, x: torch.Tensor, frozen_units: bool = False) -> torch.Tensor:
        """(N, in_ch, H, W) -> (N, out_ch, H / stride, W / stride).

        With ``frozen_units`` the residual branches run without autograd while the shortcut
        path keeps it, exactly as the published phase-1 freeze of the first group.
        """
        shortcut = x if self.shortcut is None else self.shortcut(x)
        for unit in self.units:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_units):
                residual = unit(x)
            x = residual + shortcut
            shortcut = x
        return F.relu(self.out_bn(x))


class DenseUnit(nn.Module):
    """BN-ReLU 1x1 conv (``mid_ch``, published 128) -> BN-ReLU k x k grouped conv (``growth``
    new channels, published 32; 4 groups; ``padding`` zeros per side, published 0 = valid)."""

    def __init__(
        self,
        in_ch: int,
        ksize: int,
        mid_ch: int = DENSE_BOTTLENECK_CHANNELS,
        growth: int = DENSE_GROWTH,
        padding: int = 0,
    ) -> None:
        super().__init__()
        self.preact_bn = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_ch, eps=BN_EPS)
        self.conv2 = nn.Conv2d(mid_ch, growth, ksize, padding=padding, groups=DENSE_GROUPS, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_ch, H, W) -> (N, growth, H - k + 1 + 2p, W - k + 1 + 2p), p = padding."""
        x = self.conv1(F.relu(self.preact_bn(x)))
        return self.conv2(F.relu(self.bn1(x)))


class DenseBlock(nn.Module):
    """Dense block of units (valid as published: earlier features are centre-cropped before
    concatenation)."""

    def __init__(
        self,
        in_ch: int,
        nr_units: int,
        ksize: int,
        mid_ch: int = DENSE_BOTTLENECK_CHANNELS,
        growth: int = DENSE_GROWTH,
        padding: int = 0,
    ) -> None:
        super().__init__()
        self.units = nn.ModuleList(
            DenseUnit(in_ch + idx * growth, ksize, mid_ch, growth, padding) for idx in range(nr_units)
        )
        self.out_ch = in_ch + nr_units * growth
        self.out_bn = nn.BatchNorm2d(self.out_ch, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_ch, H, W) -> (N, in_ch + growth * units, H - units * (k - 1 - 2p), same for W)."""
        for unit in self.units:
            new = unit(x)
            x = torch.cat([centre_crop(x, new.shape[-2], new.shape[-1]), new], dim=1)
        return F.relu(self.out_bn(x))


class DenseStage(nn.Module):
    """Decoder stage ``up3`` / ``up2``: k x k conv -> dense block -> 1x1 conv (``padding`` zeros
    per side of the k x k convs; published 0 = valid)."""

    def __init__(
        self,
        in_ch: int,
        mid_ch: int,
        nr_units: int,
        out_ch: int,
        ksize: int,
        dense_width: float = 1.0,
        padding: int = 0,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch, mid_ch, ksize, padding=padding, bias=False)
        self.dense = DenseBlock(
            mid_ch,
            nr_units,
            ksize,
            mid_ch=grouped_channels(DENSE_BOTTLENECK_CHANNELS, dense_width),
            growth=grouped_channels(DENSE_GROWTH, dense_width),
            padding=padding,
        )
        self.conv_out = nn.Conv2d(self.dense.out_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_ch, H, W) -> (N, out_ch, H - (units + 1)(k - 1 - 2p), same for W)."""
        return self.conv_out(self.dense(self.conv_in(x)))


class SameConvStage(nn.Module):
    """Decoder stage ``up1``: a "same"-padded k x k conv (odd k, so the padding is symmetric)."""

    def __init__(self, in_ch: int, out_ch: int, ksize: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch, out_ch, ksize, padding=ksize // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_ch, H, W) -> (N, out_ch, H, W)."""
        return self.conv_in(x)


class Head(nn.Module):
    """Output head ``u0``: BN-ReLU -> 1x1 conv with bias, giving logits."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_ch, H, W) -> (N, out_ch, H, W) logits."""
        return self.conv(F.relu(self.bn(x)))


class Decoder(nn.Module):
    """One branch's decoder (or all branches', shared): three upsample-and-sum stages and a head.

    Args:
        skip_channels: channels of the encoder maps (d0, d1, d2); the bottleneck output has
            ``skip_channels[2]`` channels, and each stage's closing 1x1 conv projects to the
            channels of the skip it is summed with (512 / 256 at full width, as published).
        out_ch: channels of the logits.
        ksize: decoder kernel side (5 original / 3 fast).
        width: multiplier of the decoder's own channel counts (stage convs 256 / 128 / 64,
            dense bottleneck 128 and growth 32, the last two rounded to multiples of the 4
            groups); 1.0 = published. Dense unit counts and kernels, hence the windows,
            do not change.
        padding: zeros per side of the ``up3``/``up2`` k x k convs (0 = valid as published).
    """

    def __init__(
        self, skip_channels: Sequence[int], out_ch: int, ksize: int, width: float = 1.0, padding: int = 0
    ) -> None:
        super().__init__()
        d0_ch, d1_ch, d2_ch = skip_channels
        up3_ch = scaled_channels(UP3_CHANNELS, width)
        up2_ch = scaled_channels(UP2_CHANNELS, width)
        up1_ch = scaled_channels(UP1_CHANNELS, width)
        self.up3 = DenseStage(d2_ch, up3_ch, UP3_DENSE_UNITS, d1_ch, ksize, width, padding)
        self.up2 = DenseStage(d1_ch, up2_ch, UP2_DENSE_UNITS, d0_ch, ksize, width, padding)
        self.up1 = SameConvStage(d0_ch, up1_ch, ksize)
        self.head = Head(up1_ch, out_ch)

    def forward(self, d0: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        """Encoder maps (finest first) and bottleneck map -> (N, out_ch, h, w) logits."""
        x = self.up3(upsample2x(bottom) + d2)
        x = upsample2x(x)
        x = self.up2(x + centre_crop(d1, x.shape[-2], x.shape[-1]))
        x = upsample2x(x)
        x = self.up1(x + centre_crop(d0, x.shape[-2], x.shape[-1]))
        return self.head(x)


def scaled_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1."""
    return max(1, round(channels * width))


def grouped_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded to a multiple of the dense units' 4 conv groups, at least 4."""
    return DENSE_GROUPS * max(1, round(channels * width / DENSE_GROUPS))


class HoVerNet(nn.Module):
    """HoVer-Net with NP, HV and (when ``nr_types`` > 0) TP branches.

    Args:
        nr_types: number of nuclear types including background; 0 = instance segmentation only.
        mode: ``'original'`` (270 -> 80 px, 5x5 decoder), ``'fast'`` (256 -> 164 px, 3x3) or
            ``'same'`` (fast with "same"-padded decoders, 256 -> 256 px; not published).
        units: residual units per encoder group (published: 3, 4, 6, 3).
        width: multiplier of every encoder channel count (stem, bottleneck mid and output
            channels); the convs reading or summed with encoder maps follow the encoder's
            channels. 1.0 = published.
        decoder_width: multiplier of the decoders' own channel counts (see :class:`Decoder`);
            the decoders dominate the cost of a narrow encoder. 1.0 = published.
        shared_decoder: one decoder (``decoders.shared``) for all branches, its head giving
            their logits stacked; False = one decoder per branch as published.

    ``forward(images)`` takes (N, 3, H, W) float RGB in 0-255 (divided by 255 inside) with
    sides valid for the mode (see :class:`Geometry`) and returns logits
    ``{'np': (N, 2, h, w), 'hv': (N, 2, h, w) (channel 0 = horizontal, 1 = vertical),
    'tp': (N, nr_types, h, w) (only when typed)}``.
    """

    def __init__(
        self,
        nr_types: int = 0,
        mode: str = "original",
        units: Sequence[int] = DEFAULT_UNITS,
        width: float = 1.0,
        decoder_width: float = 1.0,
        shared_decoder: bool = False,
    ) -> None:
        super().__init__()
        _check_options(nr_types, units, width, decoder_width)
        self.geometry = geometry_for(mode)
        self.nr_types = nr_types
        self.branch_channels = {"np": 2, "hv": 2, **({"tp": nr_types} if nr_types else {})}
        self.encoder_frozen = False
        stem_ch = scaled_channels(STEM_CHANNELS, width)
        mid_chs = [scaled_channels(ch, width) for ch in ENCODER_MID_CHANNELS]
        out_chs = [BOTTLENECK_EXPANSION * ch for ch in mid_chs]
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(3, stem_ch, STEM_KSIZE, padding=self.geometry.stem_padding, bias=False))
        self.stem.add_module("bn", nn.BatchNorm2d(stem_ch, eps=BN_EPS))
        self.stem.add_module("relu", nn.ReLU(inplace=True))
        in_chs = [stem_ch, *out_chs[:-1]]
        self.encoder = nn.ModuleList(
            ResidualGroup(in_ch, mid_ch, out_ch, nr_units, stride=1 if idx == 0 else 2)
            for idx, (in_ch, mid_ch, out_ch, nr_units) in enumerate(zip(in_chs, mid_chs, out_chs, units))
        )
        self.bottleneck = nn.Conv2d(out_chs[3], out_chs[2], 1, bias=False)
        decoder_outputs = (
            {SHARED_DECODER: sum(self.branch_channels.values())} if shared_decoder else self.branch_channels
        )
        self.decoders = nn.ModuleDict(
            {
                name: Decoder(
                    out_chs[:3], ch, self.geometry.decoder_ksize, decoder_width, self.geometry.decoder_padding
                )
                for name, ch in decoder_outputs.items()
            }
        )
        self._init_weights()

    @property
    def mode(self) -> str:
        """``'original'``, ``'fast'`` or ``'same'``."""
        return self.geometry.mode

    @property
    def shared_decoder(self) -> bool:
        """True when one decoder serves all branches (``decoders.shared``)."""
        return SHARED_DECODER in self.decoders

    def branch_head(self, branch: str) -> tuple[nn.Conv2d, slice]:
        """The 1x1 conv giving ``branch``'s logits and the output channels of it that are that
        branch's (all of them unless the decoder is shared)."""
        if not self.shared_decoder:
            conv = self.decoders[branch].head.conv
            return conv, slice(0, conv.out_channels)
        starts = dict(zip(self.branch_channels, accumulate(self.branch_channels.values(), initial=0)))
        start = starts[branch]
        return self.decoders[SHARED_DECODER].head.conv, slice(start, start + self.branch_channels[branch])

    def _init_weights(self) -> None:
        """Published initialisation: Kaiming-normal (fan-out, ReLU) convs, BN weight 1 and bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, 3, H, W) float RGB 0-255 -> dict of (N, C, h, w) logits (see class docstring)."""
        self._check_input(images)
        frozen = self.encoder_frozen and self.training
        d0 = self.encoder[0](self.stem(images / 255.0), frozen_units=frozen)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            d1 = self.encoder[1](d0)
            d2 = self.encoder[2](d1)
            d3 = self.encoder[3](d2)
        bottom = self.bottleneck(d3)
        logits = {name: decoder(d0, d1, d2, bottom) for name, decoder in self.decoders.items()}
        if self.shared_decoder:
            stacked = logits[SHARED_DECODER].split(list(self.branch_channels.values()), dim=1)
            return dict(zip(self.branch_channels, stacked))
        return logits

    def _check_input(self, images: torch.Tensor) -> None:
        """Raise :class:`UserError` unless ``images`` is (N, 3, H, W) with valid sides."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise UserError(f"HoVer-Net expects images of shape (N, 3, H, W), got {tuple(images.shape)}")
        self.geometry.output_size_for(images.shape[-2])
        self.geometry.output_size_for(images.shape[-1])

    def output_size_for(self, input_size: int) -> int:
        """Output window side for an input window side (see :meth:`Geometry.output_size_for`)."""
        return self.geometry.output_size_for(input_size)

    def freeze_encoder(self, frozen: bool) -> None:
        """Freeze or unfreeze the encoder as the published phase 1 does.

        Frozen: the units of ``encoder.0`` and all of ``encoder.1``-``encoder.3`` run without
        autograd in training mode and their parameters get ``requires_grad=False``; the stem,
        ``encoder.0``'s shortcut and closing BN, the bottleneck and the decoders keep training.
        Batch-norm statistics still update in training mode (as published).
        """
        self.encoder_frozen = frozen
        for param in self.frozen_encoder_parameters():
            param.requires_grad_(not frozen)

    def frozen_encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters :meth:`freeze_encoder` freezes: ``encoder.0.units`` and ``encoder.1``-``.3``."""
        yield from self.encoder[0].units.parameters()
        for group in self.encoder[1:]:
            yield from group.parameters()

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the ImageNet-pretrainable part: ``stem`` and ``encoder``."""
        yield from self.stem.parameters()
        yield from self.encoder.parameters()

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters trained from scratch: ``bottleneck`` and ``decoders``."""
        yield from self.bottleneck.parameters()
        yield from self.decoders.parameters()


def _check_options(nr_types: int, units: Sequence[int], width: float, decoder_width: float) -> None:
    """Raise :class:`UserError` for constructor options no HoVer-Net can have."""
    if nr_types < 0 or nr_types == 1:
        raise UserError(f"model.nr_types must be 0 (no type branch) or >= 2 (types incl. background), got {nr_types}")
    if len(units) != len(ENCODER_MID_CHANNELS) or any(int(count) < 1 for count in units):
        raise UserError(f"model.units must be 4 positive unit counts (published: [3, 4, 6, 3]), got {list(units)}")
    if not width > 0:
        raise UserError(f"model.width must be > 0 (1.0 = published widths), got {width}")
    if not decoder_width > 0:
        raise UserError(f"model.decoder_width must be > 0 (1.0 = published widths), got {decoder_width}")


def summary(net: nn.Module, input_size: int | tuple[int, int]) -> str:
    """A layer table of ``net`` for a (1, 3, H, W) input, computed on the meta device (no compute).

    Args:
        net: the network (left unchanged).
        input_size: input side, or (H, W).

    Returns:
        One row per parameterised layer in execution order: module name, output shape,
        own parameter count; then one row per output; last line ``params: <N>`` (trainable).
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    meta_net = copy.deepcopy(net).to("meta").eval()
    rows: list[tuple[str, str, int]] = []

    def record(name: str, module: nn.Module):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            rows.append((name, str(tuple(output.shape)), sum(p.numel() for p in module.parameters(recurse=False))))

        return hook

    handles = [
        module.register_forward_hook(record(name, module))
        for name, module in meta_net.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    ]
    with torch.no_grad():
        outputs = meta_net(torch.zeros(1, 3, height, width, device="meta"))
    for handle in handles:
        handle.remove()
    rows += [(f"output[{name}]", str(tuple(out.shape)), 0) for name, out in outputs.items()]
    name_w = max(len("module"), *(len(row[0]) for row in rows))
    shape_w = max(len("output shape"), *(len(row[1]) for row in rows))
    lines = [f"{'module':<{name_w}}  {'output shape':<{shape_w}}  params"]
    lines += [f"{name:<{name_w}}  {shape:<{shape_w}}  {count}" for name, shape, count in rows]
    lines.append(f"params: {sum(p.numel() for p in net.parameters() if p.requires_grad)}")
    return "\n".join(lines)
