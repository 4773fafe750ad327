"""CHR-Net (Gao et al., MICCAI 2021): W-Net segmentation and two high-resolution feature
extractors (HRFEs) sharing a ResNet-34 encoder through composite connections.

Shapes for the published 262 px window (``S`` in general, ``O = S - 6``)::

    image (N, 3, 262, 262) 0-255 --/255--> x
    x -> 7x7 valid stem (64, 256) -> group0 d1 (64, 256) -> group1 d2 (128, 128)
      -> group2 d3 (256, 64) -> group3 d4 (512, 32)                          [ResNet34Encoder]
    x -> centre crop 262 -> 256 ("40x") -> side encoder (strides 2, 2)       [SideEncoder]
    40x -> bicubic 256 -> 64 ("10x") -> side encoder (strides 1, 1)
         each: [(64, 128), (128, 64), (256, 32)]
    d1..d4 -> binary U-Net decoder -> np logits (2, 256)                     [BinaryDecoder]
    np logits -> regression U-Net -> marker logit (1, 256)                   [RegressionUNet]
    d2, d3, d4 + 10x side -> HRFE-1 -> head fusion -> (G1 + 1, 256)          [HRFE, HeadFusion]
    d2, d3, d4 + 40x side -> HRFE-2 -> head fusion -> (G2 + 1, 256)
    concat(HRFE-1, HRFE-2 logits) -> 1x1 conv -> types (T, 256)

Every convolution has no bias except the output layers, Xavier (Glorot uniform) weights,
and "BNReLU" = BatchNorm then ReLU, as the published TensorFlow code. Channel counts are the
published ones times ``width`` (encoder: ``encoder_width``) so that small CPU profiles keep
the topology.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from misc.errors import UserError
from models.weights import read_state_dict

#: Published ResNet-34 units per group and channels per group.
RESNET34_UNITS = (3, 4, 6, 3)
RESNET34_CHANNELS = (64, 128, 256, 512)
#: Pixels the 7x7 valid stem removes from the window (3 per side).
STEM_LOSS = 6
#: The window must shrink to a multiple of this after the stem (three stride-2 stages).
SIZE_MULTIPLE = 8
#: The published window: 262 in, 256 out.
PUBLISHED_INPUT = 262


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 8 (the GC block divides by 8)."""
    return max(8, int(round(channels * width)))


def valid_window_sizes(around: int = PUBLISHED_INPUT, count: int = 3) -> list[int]:
    """Input sizes near ``around`` that the network takes: ``6 + 8k`` (k >= 1)."""
    k = max(1, (around - STEM_LOSS) // SIZE_MULTIPLE)
    return [STEM_LOSS + SIZE_MULTIPLE * (k + i) for i in range(-(count // 2), count - count // 2) if k + i >= 1]


def output_size_for(input_size: int) -> int:
    """Side of the output window for an ``input_size`` window (``input_size - 6``).

    Raises:
        UserError: the valid stem and the three stride-2 stages cannot take the size; the
            message names the nearest valid sizes.
    """
    out = int(input_size) - STEM_LOSS
    if out < SIZE_MULTIPLE or out % SIZE_MULTIPLE:
        raise UserError(
            f"CHR-Net cannot take a {input_size} px window: the 7x7 valid stem removes 6 px and three "
            f"stride-2 stages need the rest to be a multiple of 8; valid sizes are 6 + 8k, e.g. "
            f"{', '.join(str(s) for s in valid_window_sizes(int(input_size)))} (published {PUBLISHED_INPUT})"
        )
    return out


def xavier_init(module: nn.Module) -> None:
    """Glorot-uniform conv weights and zero biases (the published ``xavier_initializer_conv2d``)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConvBNReLU(nn.Sequential):
    """``k x k`` conv (no bias, 'same' padding, optional stride) -> BatchNorm -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upsampling by an integer ``factor`` (the published ``FixedUnPooling``)."""
    return x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="nearest")


class GlobalContext(nn.Module):
    """Global-context block (Cao et al., GCNet) as in CHR-Net: ``x + T(softmax-pooled x)``.

    Context: a 1x1 conv to one map, softmax over the H*W positions, weighted sum of ``x`` ->
    (N, C, 1, 1). Transform T: 1x1 conv C -> C/8, LayerNorm over (C/8, 1, 1), ReLU, 1x1 conv
    C/8 -> C. The result is broadcast-added to every position.
    """

    def __init__(self, channels: int, ratio: int = 8) -> None:
        super().__init__()
        hidden = max(1, channels // ratio)
        self.mask = nn.Conv2d(channels, 1, 1, bias=False)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        n, c, h, w = x.shape
        weights = self.mask(x).reshape(n, 1, h * w).softmax(-1)  # (N, 1, HW)
        context = torch.bmm(x.reshape(n, c, h * w), weights.transpose(1, 2)).reshape(n, c, 1, 1)
        return x + self.transform(context)


class BasicBlock(nn.Module):
    """ResNet basic block without its final ReLU, in torchvision's parameter names.

    ``conv1`` (3x3, stride) -> ``bn1`` -> ReLU -> ``conv2`` (3x3) -> ``bn2`` (gamma 0 at
    initialisation); ``downsample`` (1x1 conv stride s + BN) on the shortcut when the stride is
    not 1. The global-context block lives outside (see :class:`ResNet34Encoder`) so that these
    modules load torchvision's ResNet-34 names one to one.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch (N, Cin, H, W) -> (N, Cout, H/s, W/s)."""
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)), inplace=True)))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """The identity or projected shortcut."""
        return x if self.downsample is None else self.downsample(x)


class ResNetBody(nn.Module):
    """The ResNet-34 modules that ImageNet weights exist for, in torchvision's names:
    ``conv1``/``bn1`` (the stem, here 7x7 stride 1 and valid) and ``layer1``-``layer4``."""

    def __init__(self, units: Sequence[int], channels: Sequence[int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels[0], 7, stride=1, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        cin = channels[0]
        for index, (count, cout) in enumerate(zip(units, channels)):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(count)]
            setattr(self, f"layer{index + 1}", nn.ModuleList(blocks))
            cin = cout

    def layers(self) -> list[nn.ModuleList]:
        """``[layer1, layer2, layer3, layer4]``."""
        return [getattr(self, f"layer{i}") for i in range(1, 5)]


class ResNet34Encoder(nn.Module):
    """CHR-Net's encoder: ResNet-34 with a stride-1 valid 7x7 stem, no max-pool, a GC block
    after the second conv of every basic block and one ReLU per group.

    Args:
        units: basic blocks per group (published 3, 4, 6, 3).
        width: channel multiplier (1.0 = published 64/128/256/512; ImageNet weights need 1.0).
        block_relu: False (published) applies one ReLU at the end of each group, after the
            last addition; True applies torchvision's ReLU after every block's addition (the
            usual ResNet, as the ImageNet weights were trained).
        gc: append the global-context blocks (published True).

    ``frozen`` (set by :meth:`freeze`) reproduces the published phase-1 freeze: every residual
    branch and the outputs of groups 1-3 are detached, so the groups get no gradient while the
    stem still learns through group 0's identity path to the binary decoder.
    """

    def __init__(self, units: Sequence[int] = RESNET34_UNITS, width: float = 1.0, block_relu: bool = False,
                 gc: bool = True) -> None:
        super().__init__()
        if len(units) != 4 or any(int(u) < 1 for u in units):
            raise UserError(f"model.encoder.units must be 4 positive block counts, got {list(units)}")
        self.channels = tuple(scaled(c, width) for c in RESNET34_CHANNELS)
        self.resnet = ResNetBody([int(u) for u in units], self.channels)
        self.context = nn.ModuleList(
            nn.ModuleList(GlobalContext(c) if gc else nn.Identity() for _ in range(int(u)))
            for u, c in zip(units, self.channels)
        )
        self.block_relu = bool(block_relu)
        self.frozen = False
        for layer in self.resnet.layers():
            for block in layer:
                nn.init.zeros_(block.bn2.weight)

    def freeze(self, frozen: bool) -> None:
        """Switch the published phase-1 freeze on or off (see the class docstring)."""
        self.frozen = bool(frozen)

    def frozen_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters without gradients under :meth:`freeze`: everything but the stem."""
        for name, param in self.named_parameters():
            if not name.startswith(("resnet.conv1.", "resnet.bn1.")):
                yield param

    def _group(self, x: torch.Tensor, blocks: nn.ModuleList, contexts: nn.ModuleList) -> torch.Tensor:
        for block, context in zip(blocks, contexts):
            branch = context(block.residual(x))
            branch = branch.detach() if self.frozen else branch
            x = block.shortcut(x) + branch
            if self.block_relu:
                x = F.relu(x)
        return x if self.block_relu else F.relu(x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, S, S) scaled image -> ``[d1, d2, d3, d4]``: (N, 64w, S-6), (N, 128w, (S-6)/2),
        (N, 256w, (S-6)/4), (N, 512w, (S-6)/8)."""
        body = self.resnet
        x = F.relu(body.bn1(body.conv1(x)))
        features = []
        for index, (blocks, contexts) in enumerate(zip(body.layers(), self.context)):
            x = self._group(x, blocks, contexts)
            if self.frozen and index > 0:
                x = x.detach()
            features.append(x)
        return features


# --------------------------------------------------------------------------------------------
# ImageNet weights: torchvision ResNet-34 names -> ours
# --------------------------------------------------------------------------------------------


def resnet34_mapping(names: Sequence[str]) -> dict[str, str]:
    """Our encoder names for torchvision ``resnet34`` state-dict names.

    The mapping is: ``fc.weight`` and ``fc.bias`` (the 1000-class head) are dropped; every
    other name ``N`` becomes ``resnet.N`` (``conv1``, ``bn1``, ``layerG.B.{conv1,bn1,conv2,bn2}``,
    ``layerG.0.downsample.{0,1}`` keep their names and shapes: the stem's 7x7 kernel is the
    same, only its stride and padding differ). The GC blocks (``context.*``) have no ImageNet
    counterpart and keep their initialisation.

    Returns:
        ``{torchvision name: our name relative to the encoder}``.
    """
    return {name: f"resnet.{name}" for name in names if not name.startswith("fc.")}


def encoder_state_from_resnet34(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision ResNet-34 state dict (``module.`` prefixes allowed) renamed by
    :func:`resnet34_mapping`, ready for ``encoder.resnet.load_state_dict(strict=True)`` after
    the ``resnet.`` prefix is stripped."""
    plain = {name.removeprefix("module."): tensor for name, tensor in state.items()}
    return {ours.removeprefix("resnet."): plain[theirs] for theirs, ours in resnet34_mapping(list(plain)).items()}


def load_resnet34(encoder: ResNet34Encoder, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ImageNet ResNet-34 weights into ``encoder.resnet`` with ``strict=True``.

    Raises:
        UserError: a name is missing or unexpected, or a shape differs (e.g. a width other
            than 1.0 or other unit counts); the message names them.
    """
    mapped = encoder_state_from_resnet34(state)
    expected = encoder.resnet.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    shapes = [f"{k}: file {tuple(mapped[k].shape)}, network {tuple(v.shape)}"
              for k, v in expected.items() if k in mapped and tuple(mapped[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        detail = "; ".join(filter(None, [
            f"missing {missing[:4]}" if missing else "", f"unexpected {unexpected[:4]}" if unexpected else "",
            f"shapes differ: {shapes[:3]}" if shapes else ""]))
        raise UserError(f"{source} is not a torchvision ResNet-34 state dict for this encoder "
                        f"(model.encoder.units must be [3, 4, 6, 3] and width 1.0): {detail}")
    encoder.resnet.load_state_dict(mapped, strict=True)


def read_resnet34(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a local ``.pt``/``.pth`` file (``weights_only=True``; a ``state_dict``
    or ``model`` entry is unwrapped). Nothing is downloaded."""
    return read_state_dict(path, "model.pretrained (a torchvision resnet34 .pth state dict)")


def zero_state_from_fixture(path: str | Path, configuration: str = "default") -> dict[str, torch.Tensor]:
    """Zero tensors with the names and shapes of a ``*_state_keys.json`` fixture (tests, docs)."""
    spec = json.loads(Path(path).read_text())[configuration]["state"]
    return {name: torch.zeros(shape, dtype=torch.int64 if name.endswith("num_batches_tracked") else torch.float32)
            for name, shape in spec.items()}


# --------------------------------------------------------------------------------------------
# W-Net
# --------------------------------------------------------------------------------------------


class EncoderBlock(nn.Sequential):
    """Published ``encoder_blk``: two 3x3 BNReLU convs (optional stride 2 each), optional GC."""

    def __init__(self, cin: int, cout: int, strides: tuple[int, int] = (1, 1), gc: bool = False) -> None:
        layers = [ConvBNReLU(cin, cout, 3, strides[0]), ConvBNReLU(cout, cout, 3, strides[1])]
        if gc:
            layers.append(GlobalContext(cout))
        super().__init__(*layers)


class DecoderBlock(nn.Module):
    """Published ``decoder_blk``: nearest 2x upsampling, concat the skip, two 3x3 BNReLU convs."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(ConvBNReLU(cin + cskip, cout), ConvBNReLU(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """(N, Cin, h, w), (N, Cskip, 2h, 2w) -> (N, Cout, 2h, 2w)."""
        return self.convs(torch.cat([upsample(x, 2), skip], 1))


class BinaryDecoder(nn.Module):
    """W-Net's first U: d4 -> (u3b + d3) -> (u2b + d2) -> (u1b + d1) -> 1x1 conv -> 2 logits."""

    def __init__(self, enc: Sequence[int], width: float) -> None:
        super().__init__()
        c3, c2, c1 = scaled(256, width), scaled(128, width), scaled(64, width)
        self.u3 = DecoderBlock(enc[3], enc[2], c3)
        self.u2 = DecoderBlock(c3, enc[1], c2)
        self.u1 = DecoderBlock(c2, enc[0], c1)
        self.out = nn.Conv2d(c1, 2, 1, bias=True)

    def forward(self, d: Sequence[torch.Tensor]) -> torch.Tensor:
        """Encoder features -> (N, 2, S-6, S-6) background/nucleus logits."""
        return self.out(self.u1(self.u2(self.u3(d[3], d[2]), d[1]), d[0]))


class RegressionUNet(nn.Module):
    """W-Net's second U on the 2 binary logits: d1r (64) -> d2r (128, /2) -> d3r (256, /4) ->
    u2r (+ d2r) -> u1r (+ d1r) -> 1x1 conv -> 1 marker logit (sigmoid = marker map)."""

    def __init__(self, width: float) -> None:
        super().__init__()
        c1, c2, c3 = scaled(64, width), scaled(128, width), scaled(256, width)
        self.d1 = EncoderBlock(2, c1)
        self.d2 = EncoderBlock(c1, c2, (2, 1))
        self.d3 = EncoderBlock(c2, c3, (2, 1))
        self.u2 = DecoderBlock(c3, c2, c2)
        self.u1 = DecoderBlock(c2, c1, c1)
        self.out = nn.Conv2d(c1, 1, 1, bias=True)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, 2, O, O) binary logits -> (N, 1, O, O) marker logit."""
        r1 = self.d1(logits)
        r2 = self.d2(r1)
        return self.out(self.u1(self.u2(self.d3(r2), r2), r1))


# --------------------------------------------------------------------------------------------
# Side encoders, HRFE, head fusion
# --------------------------------------------------------------------------------------------


class SideEncoder(nn.Module):
    """Image features for one HRFE (published ``en_10x``/``en_40x`` + three projections).

    An :class:`EncoderBlock` (``cw`` = 128w channels, GC) on the image with ``strides`` (1, 1
    for the 64 px "10x" image, 2, 2 for the 256 px "40x" crop) -> F at O/4; then ``up`` =
    nearest 2x + 3x3 BNReLU (64w, O/2), ``straight`` = 3x3 BNReLU (128w, O/4), ``down`` = 3x3
    stride-2 BNReLU (256w, O/8).
    """

    def __init__(self, width: float, strides: tuple[int, int]) -> None:
        super().__init__()
        cw = scaled(128, width)
        self.block = EncoderBlock(3, cw, strides, gc=True)
        self.up = ConvBNReLU(cw, scaled(64, width))
        self.straight = ConvBNReLU(cw, cw)
        self.down = ConvBNReLU(cw, scaled(256, width), 3, 2)

    @property
    def out_channels(self) -> tuple[int, int, int]:
        """Channels of the three outputs."""
        return self.up[0].out_channels, self.straight[0].out_channels, self.down[0].out_channels

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, h, h) -> [(N, 64w, O/2), (N, 128w, O/4), (N, 256w, O/8)]."""
        f = self.block(image)
        return [self.up(upsample(f, 2)), self.straight(f), self.down(f)]


class Composite(nn.Sequential):
    """Composite connection: nearest upsampling by ``factor`` then 1x1 conv BNReLU to ``cout``."""

    def __init__(self, cin: int, cout: int, factor: int) -> None:
        super().__init__(nn.Upsample(scale_factor=factor, mode="nearest"), ConvBNReLU(cin, cout, 1))


class ResUnit(nn.Module):
    """One basic block with GC and its ReLU (``res_blk_basic`` with count 1, stride 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = BasicBlock(channels, channels, 1)
        self.context = GlobalContext(channels)
        nn.init.zeros_(self.block.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        return F.relu(x + self.context(self.block.residual(x)))


class HRFE(nn.Module):
    """High-resolution feature extractor (published ``lead_encoder``): three streams at O/2,
    O/4, O/8 px with 128w/256w/512w channels fed by the encoder's d2, d3, d4 through composite
    connections, with the side features concatenated into each stream's first stage.

    Names follow the published scopes: ``d11`` ... ``d33`` stream stages, ``res*`` their basic
    blocks, ``com_*`` composite connections, ``img*`` the 1x1 fusions with side features.
    """

    def __init__(self, enc: Sequence[int], side: Sequence[int], width: float) -> None:
        super().__init__()
        c1, c2, c3 = scaled(128, width), scaled(256, width), scaled(512, width)
        self.com_11 = Composite(enc[2], enc[1], 2)  # added to d2 (128 = c1 when the widths agree)
        self.img1 = ConvBNReLU(enc[1] + side[0], c1, 1)
        self.res11 = ResUnit(c1)
        self.straight11, self.down11 = ConvBNReLU(c1, c1), ConvBNReLU(c1, c2, 3, 2)
        self.com_12, self.com_22 = Composite(enc[3], c1, 4), Composite(enc[3], c2, 2)
        self.img2 = ConvBNReLU(c2 + side[1], c2, 1)
        self.res12, self.res22 = ResUnit(c1), ResUnit(c2)
        self.straight12, self.com_13 = ConvBNReLU(c1, c1), Composite(c2, c1, 2)
        self.straight22, self.down12 = ConvBNReLU(c2, c2), ConvBNReLU(c1, c2, 3, 2)
        self.down22, self.downdown12 = ConvBNReLU(c2, c3, 3, 2), ConvBNReLU(c2, c3, 3, 2)
        self.img3 = ConvBNReLU(c3 + side[2], c3, 1)
        self.res13, self.res23, self.res33 = ResUnit(c1), ResUnit(c2), ResUnit(c3)
        self.straight13, self.com_141, self.com_142 = ConvBNReLU(c1, c1), Composite(c2, c1, 2), Composite(c3, c1, 4)
        self.straight23, self.down13, self.com_24 = ConvBNReLU(c2, c2), ConvBNReLU(c1, c2, 3, 2), Composite(c3, c2, 2)
        self.straight33, self.downdown13 = ConvBNReLU(c3, c3), ConvBNReLU(c2, c3, 3, 2)
        self.down23 = ConvBNReLU(c2, c3, 3, 2)
        self.out_channels = (c1, c2, c3)

    def forward(self, d: Sequence[torch.Tensor], side: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Encoder ``[d1, d2, d3, d4]`` and side ``[s1, s2, s3]`` -> heads ``[h1 (128w, O/2),
        h2 (256w, O/4), h3 (512w, O/8)]``."""
        d11 = self.img1(torch.cat([d[1] + self.com_11(d[2]), side[0]], 1))
        r11 = self.res11(d11)
        d12 = self.straight11(r11) + self.com_12(d[3])
        d22 = self.img2(torch.cat([self.down11(r11) + self.com_22(d[3]), side[1]], 1))
        r12, r22 = self.res12(d12), self.res22(d22)
        d13 = self.straight12(r12) + self.com_13(r22)
        down12 = self.down12(r12)
        d23 = self.straight22(r22) + down12
        d33 = self.img3(torch.cat([self.down22(r22) + self.downdown12(down12), side[2]], 1))
        r13, r23, r33 = self.res13(d13), self.res23(d23), self.res33(d33)
        h1 = self.straight13(r13) + self.com_141(r23) + self.com_142(r33)
        down13 = self.down13(r13)
        h2 = self.straight23(r23) + down13 + self.com_24(r33)
        h3 = self.straight33(r33) + self.downdown13(down13) + self.down23(r23)
        return [h1, h2, h3]


class HeadFusion(nn.Module):
    """Head fusion: concat[h1, up2(h2), up4(h3)] -> 1x1 conv 256w BNReLU -> up2 -> 1x1 conv
    (bias) -> ``classes`` logits at the output size."""

    def __init__(self, heads: Sequence[int], classes: int, width: float) -> None:
        super().__init__()
        mid = scaled(256, width)
        self.mix = ConvBNReLU(sum(heads), mid, 1)
        self.out = nn.Conv2d(mid, classes, 1, bias=True)

    def forward(self, heads: Sequence[torch.Tensor]) -> torch.Tensor:
        """[(N, C1, O/2), (N, C2, O/4), (N, C3, O/8)] -> (N, classes, O, O)."""
        fused = self.mix(torch.cat([heads[0], upsample(heads[1], 2), upsample(heads[2], 4)], 1))
        return self.out(upsample(fused, 2))


def side_images(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The "40x" centre crop (N, 3, S-6, S-6) and the "10x" image, its bicubic resize to
    (N, 3, (S-6)/4, (S-6)/4), of a scaled input (N, 3, S, S)."""
    half = STEM_LOSS // 2
    crop = x[..., half:-half, half:-half]
    size = crop.shape[-1] // 4
    return crop, F.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False)


class CHRNet(nn.Module):
    """The whole network.

    Args:
        nr_types: classes of the final map including background (ccRCC 5).
        group_sizes: classes of each HRFE's grouped map including background (published 4, 4).
        units: encoder basic blocks per group.
        encoder_width: encoder channel multiplier (ImageNet weights need 1.0).
        width: channel multiplier of the decoders, side encoders, HRFEs and head fusion.
        block_relu: per-block ReLUs in the encoder (False = published once per group).
        gc: GC blocks in the encoder.

    ``forward`` takes (N, 3, S, S) float RGB in 0-255 (S = 6 + 8k) and returns logits at
    O = S - 6: ``tp`` (N, nr_types, O, O), ``hrfe1``/``hrfe2`` (N, G + 1, O, O), ``np``
    (N, 2, O, O) and ``marker`` (N, 1, O, O) (sigmoid -> marker map).
    """

    def __init__(self, nr_types: int = 5, group_sizes: Sequence[int] = (4, 4), units: Sequence[int] = RESNET34_UNITS,
                 encoder_width: float = 1.0, width: float = 1.0, block_relu: bool = False, gc: bool = True) -> None:
        super().__init__()
        if len(group_sizes) != 2:
            raise UserError(f"CHR-Net has two HRFEs; model.groupings must list 2 groupings, got {len(group_sizes)}")
        self.encoder = ResNet34Encoder(units, encoder_width, block_relu, gc)
        enc = self.encoder.channels
        self.binary = BinaryDecoder(enc, width)
        self.regression = RegressionUNet(width)
        self.side_10x = SideEncoder(width, (1, 1))
        self.side_40x = SideEncoder(width, (2, 2))
        side = self.side_10x.out_channels
        self.hrfe1, self.hrfe2 = HRFE(enc, side, width), HRFE(enc, side, width)
        heads = self.hrfe1.out_channels
        self.fusion1 = HeadFusion(heads, int(group_sizes[0]), width)
        self.fusion2 = HeadFusion(heads, int(group_sizes[1]), width)
        self.type_out = nn.Conv2d(int(group_sizes[0]) + int(group_sizes[1]), int(nr_types), 1, bias=True)
        xavier_init(self)  # convolutions only: the zero-initialised last BN gammas stay

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """See the class docstring."""
        output_size_for(images.shape[-1])
        if images.shape[-1] != images.shape[-2]:
            raise UserError(f"CHR-Net takes square windows, got {tuple(images.shape[-2:])}")
        x = images / 255.0
        crop, small = side_images(x)
        d = self.encoder(x)
        np_logits = self.binary(d)
        g1 = self.fusion1(self.hrfe1(d, self.side_10x(small)))
        g2 = self.fusion2(self.hrfe2(d, self.side_40x(crop)))
        return {
            "tp": self.type_out(torch.cat([g1, g2], 1)),
            "hrfe1": g1,
            "hrfe2": g2,
            "np": np_logits,
            "marker": self.regression(np_logits),
        }
