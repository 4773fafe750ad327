"""FullNet (Qu et al., MICCAI 2019): a full-resolution dense network with hybrid dilations.

No pooling or striding: a 3x3 stem to 24 channels, 7 dense blocks (each followed by a 1x1
transition with compression 0.5, rounded down) whose 3x3 layers use the hybrid dilation rates
of :data:`HYBRID_DILATIONS`, and a 3x3 head to the classes. Every conv layer is
conv (no bias) -> LeakyReLU(0.01) -> BatchNorm, as published.

Module names equal the published ``FullNet`` (``conv1``, ``blocks.block<i>.denselayer<j>``,
``blocks.trans<i>``, ``conv2``), so a published state dict loads with ``strict=True`` after
:func:`published_state` strips DataParallel's ``module.`` prefix.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from misc.errors import UserError

#: Per-layer dilation rates of a block, keyed by (block dilation, layers per block) (SEEDS 3.2).
HYBRID_DILATIONS: dict[tuple[int, int], tuple[int, ...]] = {
    (1, 4): (1, 1, 1, 1),
    (2, 4): (1, 2, 3, 2),
    (4, 4): (1, 2, 5, 9),
    (8, 4): (3, 7, 10, 13),
    (16, 4): (13, 15, 17, 19),
    (1, 6): (1, 1, 1, 1, 1, 1),
    (2, 6): (1, 2, 3, 1, 2, 3),
    (4, 6): (1, 2, 3, 5, 6, 7),
    (8, 6): (2, 5, 7, 9, 11, 14),
    (16, 6): (10, 13, 16, 17, 19, 21),
}
BLOCK_DILATIONS = (1, 2, 4, 8, 16, 4, 1)
STEM_CHANNELS = 24
LEAKY_SLOPE = 0.01
#: FCN_pooling ablation: 2x2 max-pool after blocks 1-4, bilinear x4 upsampling after blocks 5-6.
POOL_AFTER = (0, 1, 2, 3)
UPSAMPLE_AFTER = (4, 5)


def layer_dilations(block_dilations: Sequence[int], n_layers: int, hybrid: bool = True) -> list[tuple[int, ...]]:
    """Dilation rate of every 3x3 layer, one tuple per block.

    Raises:
        UserError: ``hybrid`` with a (block dilation, n_layers) pair the published table lacks.
    """
    rates = []
    for dilation in block_dilations:
        if not hybrid:
            rates.append((int(dilation),) * n_layers)
            continue
        key = (int(dilation), int(n_layers))
        if key not in HYBRID_DILATIONS:
            have = sorted(HYBRID_DILATIONS)
            raise UserError(f"model.dilations/n_layers: no hybrid dilation rates for block dilation {key[0]} with "
                            f"{key[1]} layers (published pairs: {have}); set model.hybrid: false or use 4 or 6 layers")
        rates.append(HYBRID_DILATIONS[key])
    return rates


class ConvLayer(nn.Sequential):
    """Conv2d (no bias) -> LeakyReLU(0.01) -> BatchNorm2d; (N, C_in, H, W) -> (N, C_out, H', W')."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False)
        self.relu = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.bn = nn.BatchNorm2d(out_channels)


class DenseLayer(nn.Module):
    """3x3 dilated :class:`ConvLayer` on the concatenation of all earlier features, then dropout.

    Takes the list of the block's feature maps so far and returns the ``growth`` new channels.
    With ``memory_efficient`` the concatenation and convolution are recomputed in the backward
    pass instead of being stored (``torch.utils.checkpoint``); activation and batch norm run
    once, so running statistics are updated exactly as without it.
    """

    def __init__(self, in_channels: int, growth: int, drop_rate: float, dilation: int, memory_efficient: bool) -> None:
        super().__init__()
        self.conv = ConvLayer(in_channels, growth, 3, padding=dilation, dilation=dilation)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def _concat_conv(self, *features: torch.Tensor) -> torch.Tensor:
        return self.conv.conv(torch.cat(features, 1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and torch.is_grad_enabled() and any(f.requires_grad for f in features):
            out = checkpoint(self._concat_conv, *features, use_reentrant=False)
        else:
            out = self._concat_conv(*features)
        out = self.conv.bn(self.conv.relu(out))
        return F.dropout(out, p=self.drop_rate, training=self.training) if self.drop_rate > 0 else out


class DenseBlock(nn.Module):
    """Dense layers ``denselayer1..n``; (N, C, H, W) -> (N, C + n * growth, H, W)."""

    def __init__(self, in_channels: int, growth: int, drop_rate: float, dilations: Sequence[int],
                 memory_efficient: bool = False) -> None:
        super().__init__()
        for index, dilation in enumerate(dilations):
            layer = DenseLayer(in_channels + index * growth, growth, drop_rate, int(dilation), memory_efficient)
            self.add_module(f"denselayer{index + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.children():
            features.append(layer(features))
        return torch.cat(features, 1)


class FullNet(nn.Module):
    """FullNet; input (N, in_channels, H, W) float (already normalised), output (N, num_classes, H, W) logits.

    Args:
        in_channels: input channels (3 for RGB).
        num_classes: output classes (3: background, inside, contour).
        n_layers: dense layers per block (published 6).
        growth: channels each dense layer adds (published 24).
        compression: transition output = floor(compression * input channels) (published 0.5).
        drop_rate: dropout after each dense layer in training (published 0.1).
        block_dilations: one dilation per block (published (1, 2, 4, 8, 16, 4, 1)).
        hybrid: per-layer hybrid dilation rates (published) instead of the block's rate for all.
        pooling: the ``FCN_pooling`` ablation (H and W must be multiples of 16).
        memory_efficient: recompute dense concatenations in the backward pass (less memory, slower).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 3, n_layers: int = 6, growth: int = 24,
                 compression: float = 0.5, drop_rate: float = 0.1,
                 block_dilations: Sequence[int] = BLOCK_DILATIONS, hybrid: bool = True, pooling: bool = False,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        if pooling and len(block_dilations) < max(UPSAMPLE_AFTER) + 1:
            raise UserError(f"model.pooling needs at least {max(UPSAMPLE_AFTER) + 1} blocks, "
                            f"got {len(block_dilations)}")
        self.pooling = pooling
        self.conv1 = ConvLayer(in_channels, STEM_CHANNELS, 3, padding=1)
        self.blocks = nn.Sequential()
        channels = STEM_CHANNELS
        for index, dilations in enumerate(layer_dilations(block_dilations, n_layers, hybrid)):
            block = DenseBlock(channels, growth, drop_rate, dilations, memory_efficient)
            self.blocks.add_module(f"block{index + 1}", block)
            dense_out = channels + n_layers * growth
            channels = int(math.floor(dense_out * compression))
            self.blocks.add_module(f"trans{index + 1}", ConvLayer(dense_out, channels, 1))
            if pooling and index in POOL_AFTER:
                self.blocks.add_module(f"pool{index + 1}", nn.MaxPool2d(2, 2))
            elif pooling and index in UPSAMPLE_AFTER:
                self.blocks.add_module(f"upsample{index + 1}", nn.Upsample(scale_factor=4, mode="bilinear",
                                                                           align_corners=True))
        self.conv2 = nn.Conv2d(channels, num_classes, 3, padding=1, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Published initialisation: conv weights N(0, sqrt(2 / (k_h * k_w * out))), BN gamma 1, beta 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooling and (x.shape[-1] % 16 or x.shape[-2] % 16):
            raise UserError(f"FullNet with model.pooling needs H and W divisible by 16, got {tuple(x.shape[-2:])}")
        return self.conv2(self.blocks(self.conv1(x)))


def published_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A published FullNet state dict in our names.

    Accepts the checkpoint dict of the published ``train.py`` (``{'state_dict': ...}``) or the
    state dict itself; the only mapping is dropping DataParallel's ``module.`` prefix.
    """
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    return {key.removeprefix("module."): value for key, value in state.items()}
