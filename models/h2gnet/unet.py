"""The refinement U-Net of H2G-Net (the published Keras builder ``src/architectures/UNet.py``).

- conv block: 2 x [3x3 conv "same" -> BN -> ReLU -> spatial dropout (when set)];
- encoder level i (all but the last): conv block with ``widths[i]`` channels, its output kept as
  a skip, then 2x2 max-pool; the last level is the bottom conv block;
- decoder level i (from the second deepest up): 2x nearest upsampling (Keras ``UpSampling2D``)
  -> concatenation [skip i, upsampled] -> conv block with ``widths[i]`` channels (the published
  decoder mirrors the encoder's channel counts);
- head: 1x1 conv to ``classes`` logits (softmax in :meth:`RefineUNet.probabilities`).

Depth = ``len(widths)``: the published builder halves until the side is at most 4 px, so a
1024-px grid has 9 levels (8 poolings); the input side must be a multiple of
``2 ** (len(widths) - 1)``. The published refinement network (``src/apps/refinement/train.py``)
has widths 8, 16, 32, 64, 128, 128, 256, 256 and 512 at the bottom, no dropout in the encoder
and spatial dropout 0.1 in the decoder, and batch renormalisation (here plain batch norm).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from misc.errors import UserError

INPUT_CHANNELS = 4  # thumbnail RGB in 0-1 + tumour heatmap in 0-1


def conv_block(inp: int, out: int, dropout: float) -> nn.Sequential:
    """2 x [3x3 conv (padding 1) -> BN -> ReLU -> spatial dropout when ``dropout`` > 0]."""
    layers: list[nn.Module] = []
    for channels_in in (inp, out):
        layers += [nn.Conv2d(channels_in, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class RefineUNet(nn.Module):
    """U-Net on the 4-channel refinement input.

    Args:
        widths: channels per level, shallowest first (at least 2 levels).
        classes: output classes (2: background, tumour).
        in_channels: input channels (4: RGB + heatmap).
        encoder_dropout: spatial dropout after every encoder conv, bottom included (0 = none).
        decoder_dropout: spatial dropout after every decoder conv (0 = none).
    """

    def __init__(self, widths: Sequence[int], classes: int = 2, in_channels: int = INPUT_CHANNELS,
                 encoder_dropout: float = 0.0, decoder_dropout: float = 0.0) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or min(widths) < 1:
            raise UserError(f"model.refine.widths {widths} must list at least 2 positive channel counts")
        for name, rate in (("encoder_dropout", encoder_dropout), ("decoder_dropout", decoder_dropout)):
            if not 0 <= rate < 1:
                raise UserError(f"model.refine.{name} {rate} is outside [0, 1)")
        self.widths = widths
        self.encoder = nn.ModuleList()
        channels = in_channels
        for width in widths:
            self.encoder.append(conv_block(channels, width, encoder_dropout))
            channels = width
        self.decoder = nn.ModuleList(
            conv_block(widths[i] + widths[i + 1], widths[i], decoder_dropout) for i in range(len(widths) - 1)
        )
        self.head = nn.Conv2d(widths[0], classes, 1)

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this (2 ** poolings)."""
        return 2 ** (len(self.widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, classes, H, W) logits of (N, in_channels, H, W) float input (H, W multiples of :attr:`multiple`)."""
        if x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise UserError(f"refinement input {tuple(x.shape[-2:])} is not a multiple of {self.multiple} "
                            f"({len(self.widths)} U-Net levels); set model.refine.grid to a multiple of {self.multiple}")
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x)
            if i < len(self.encoder) - 1:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for i in reversed(range(len(self.decoder))):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.decoder[i](torch.cat([skips[i], x], dim=1))
        return self.head(x)

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        """(N, classes, H, W) softmax probabilities of :meth:`forward`'s logits."""
        return logits.float().softmax(dim=1)
