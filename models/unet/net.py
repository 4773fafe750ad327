"""The CoNIC "winning approach" U-Net: SE-ResNeXt encoder, one shared dense decoder, three heads.

As published (SEEDS 6.2; WinnieLaugh/CONIC_Pathology_AI ``models/model_head_aug.py``):

- ``encoder``: SE-ResNeXt-50 or -101 (32x4d) with a stride-1 7x7 stem and no max-pool
  (:mod:`models.unet.encoder`): maps d0..d3 at 1, 1/2, 1/4, 1/8 of the input.
- ``bottleneck``: 1x1 conv 2048 -> 1024 on d3.
- ``decoder`` (one, shared by the three heads; all k x k convs zero-padded, so the output
  window equals the input window): ``up3`` = nearest 2x up -> Dropout2d(0.5) -> + d2 -> 3x3
  conv 1024 -> 256 -> dense block of 8 units -> 1x1 conv to 512; ``up2`` = up -> dropout ->
  + d1 -> 3x3 conv 512 -> 128 -> dense block of 4 units -> 1x1 conv to 256; ``up1`` = up ->
  dropout -> + d0 -> 3x3 conv 256 -> 64. Dense units as HoVer-Net's (BN-ReLU-1x1 conv 128 ->
  BN-ReLU-3x3 conv 32 in 4 groups; :class:`models.hovernet.net.DenseStage`).
- ``heads.np`` (2), ``heads.hv`` (2), ``heads.tp`` (types incl. background): each BN-ReLU-1x1
  conv with bias on the last decoder map (:class:`models.hovernet.net.Head`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from misc.errors import UserError
from models.hovernet.net import (
    UP1_CHANNELS,
    UP2_CHANNELS,
    UP2_DENSE_UNITS,
    UP3_CHANNELS,
    UP3_DENSE_UNITS,
    DenseStage,
    Head,
    SameConvStage,
    scaled_channels,
    upsample2x,
)
from models.unet.encoder import BASE_WIDTH, CARDINALITY, SE_REDUCTION, VARIANT_UNITS, SEResNeXtEncoder, load_pretrained

DECODER_KSIZE = 3
DOWNSAMPLING = 8


class SharedDecoder(nn.Module):
    """The one decoder of the U-Net: three upsample -> Dropout2d -> sum-with-skip stages.

    Args:
        skip_channels: channels of d0, d1, d2; the bottleneck output has ``skip_channels[2]``.
        width: multiplier of the decoder's own channels (stage convs 256 / 128 / 64, dense
            bottleneck 128 and growth 32); 1.0 = published.
        dropout: Dropout2d probability after every upsampling (published 0.5).
    """

    def __init__(self, skip_channels: Sequence[int], width: float = 1.0, dropout: float = 0.5) -> None:
        super().__init__()
        d0_ch, d1_ch, d2_ch = skip_channels
        padding = DECODER_KSIZE // 2
        self.up3 = DenseStage(d2_ch, scaled_channels(UP3_CHANNELS, width), UP3_DENSE_UNITS, d1_ch, DECODER_KSIZE, width, padding)
        self.up2 = DenseStage(d1_ch, scaled_channels(UP2_CHANNELS, width), UP2_DENSE_UNITS, d0_ch, DECODER_KSIZE, width, padding)
        self.up1 = SameConvStage(d0_ch, scaled_channels(UP1_CHANNELS, width), DECODER_KSIZE)
        self.dropout = nn.Dropout2d(dropout)
        self.out_channels = self.up1.conv_in.out_channels

    def forward(self, d0: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        """Encoder maps (finest first, (N, C_g, H / 2^g, W / 2^g)) and the bottleneck map
        (N, C_2, H / 8, W / 8) -> (N, 64 * width, H, W)."""
        x = self.up3(self.dropout(upsample2x(bottom)) + d2)
        x = self.up2(self.dropout(upsample2x(x)) + d1)
        return self.up1(self.dropout(upsample2x(x)) + d0)


class UNet(nn.Module):
    """U-Net with SE-ResNeXt encoder and NP / HV / TP heads.

    Args:
        nr_types: type channels of the ``tp`` head including background (>= 2).
        units: residual units per encoder group (se_resnext50_32x4d: 3, 4, 6, 3;
            se_resnext101_32x4d: 3, 4, 23, 3).
        width: encoder channel multiplier (1.0 = published).
        groups, base_width, reduction: ResNeXt cardinality, its base width and the SE
            reduction (published 32, 4, 16).
        decoder_width: decoder channel multiplier (1.0 = published).
        dropout: Dropout2d probability after each decoder upsampling (published 0.5).
        zero_init_hv: start the ``hv`` head at zero (weights and bias), where tanh has its full
            slope; the published (Kaiming fan-out) start gives logits of several units, whose
            saturated tanh short CPU runs spend many steps leaving (published: False).
        pretrained: local Cadene ImageNet ``.pth`` for the encoder (see
            :func:`models.unet.encoder.load_pretrained`), or None.

    ``forward(images)`` takes (N, 3, H, W) float RGB in 0-255 (divided by 255 inside, as the
    published code feeds ``ToTensor`` images), H and W multiples of 8, and returns logits
    ``{'np': (N, 2, H, W), 'hv': (N, 2, H, W) (channel 0 = horizontal, 1 = vertical; before
    tanh), 'tp': (N, nr_types, H, W)}``.
    """

    def __init__(
        self,
        nr_types: int,
        units: Sequence[int] = VARIANT_UNITS["se_resnext50_32x4d"],
        width: float = 1.0,
        groups: int = CARDINALITY,
        base_width: int = BASE_WIDTH,
        reduction: int = SE_REDUCTION,
        decoder_width: float = 1.0,
        dropout: float = 0.5,
        zero_init_hv: bool = False,
        pretrained: str | Path | None = None,
    ) -> None:
        super().__init__()
        _check_options(nr_types, decoder_width, dropout)
        self.nr_types = nr_types
        self.encoder = SEResNeXtEncoder(units, width, groups, base_width, reduction)
        skips = self.encoder.out_channels
        self.bottleneck = nn.Conv2d(skips[3], skips[2], 1, bias=False)
        self.decoder = SharedDecoder(skips[:3], decoder_width, dropout)
        channels = self.decoder.out_channels
        self.heads = nn.ModuleDict({"np": Head(channels, 2), "hv": Head(channels, 2), "tp": Head(channels, nr_types)})
        self._init_weights()
        if zero_init_hv:
            nn.init.zeros_(self.heads["hv"].conv.weight)
            nn.init.zeros_(self.heads["hv"].conv.bias)
        if pretrained is not None:
            load_pretrained(self.encoder, pretrained)

    def _init_weights(self) -> None:
        """Kaiming-normal (fan-out, ReLU) convs, BN weight 1 and bias 0, zero conv biases."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, 3, H, W) float RGB 0-255 -> dict of (N, C, H, W) logits (see class docstring)."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] % DOWNSAMPLING or images.shape[-2] % DOWNSAMPLING:
            raise UserError(f"the U-Net expects images (N, 3, H, W) with H and W multiples of 8, got {tuple(images.shape)}")
        d0, d1, d2, d3 = self.encoder(images / 255.0)
        features = self.decoder(d0, d1, d2, self.bottleneck(d3))
        return {name: head(features) for name, head in self.heads.items()}


def _check_options(nr_types: int, decoder_width: float, dropout: float) -> None:
    """Raise :class:`UserError` for options no U-Net of this family can have."""
    if nr_types < 2:
        raise UserError(f"model.nr_types must be >= 2 (nucleus types including background), got {nr_types}")
    if not decoder_width > 0:
        raise UserError(f"model.decoder.width must be > 0 (1.0 = published widths), got {decoder_width}")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"model.decoder.dropout must be in [0, 1), got {dropout}")
