"""HistoNet X1.7, the patch classifier of HistoSegNet (Chan et al., ICCV 2019; SEEDS 4.2).

Layers (3x3 convolutions with padding 1 and bias, each followed by ReLU and then batch
normalisation, as in the published Keras model; BN eps 1e-3, Keras momentum 0.99)::

    block1  conv64  conv64  maxpool 2          224 -> 112 px
    block2  conv128 conv128 maxpool 2          112 -> 56 px
    block3  conv256 conv256 conv256            56 px   <- Grad-CAM layer: the last ReLU
    head    maxpool 2, dropout 0.5, global max pooling, dense -> classes (logits; sigmoid outside)

The network takes inputs already standardised with the single scalar mean/std of the training
patches (the family applies it; see ``models.histosegnet.family``).

The first seven convolutions are those of VGG16 and load from a local ImageNet VGG16 file
(:func:`load_vgg16_weights`, mapping :data:`VGG16_MAPPING`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from misc.errors import UserError
from models.weights import read_state_dict

#: Channels of the seven convolutions at width 1 (the published ones).
CHANNELS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256))
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # torch convention; Keras momentum 0.99

#: Our convolution name -> torchvision ``vgg16`` ``features`` index (weights and biases).
VGG16_MAPPING: dict[str, str] = {
    "block1.0.conv": "features.0",
    "block1.1.conv": "features.2",
    "block2.0.conv": "features.5",
    "block2.1.conv": "features.7",
    "block3.0.conv": "features.10",
    "block3.1.conv": "features.12",
    "block3.2.conv": "features.14",
}


class ConvReLUBN(nn.Module):
    """3x3 convolution (bias) -> ReLU -> batch norm: (N, in, H, W) -> (N, out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float = BN_MOMENTUM) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True)
        self.relu = nn.ReLU(inplace=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=bn_momentum)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """The ReLU output (the tensor Grad-CAM differentiates against in the last unit)."""
        return self.relu(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.activation(x))


def _block(channels: tuple[int, ...], in_channels: int, pool: bool, bn_momentum: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers.append(ConvReLUBN(in_channels, out_channels, bn_momentum))
        in_channels = out_channels
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def scaled_channels(width: float) -> tuple[tuple[int, ...], ...]:
    """Channels of the three blocks at a width multiplier (1.0 = published), at least 4 each."""
    if not width > 0:
        raise UserError(f"model.width is {width}; expected a positive multiplier (1.0 = published)")
    return tuple(tuple(max(4, round(c * width)) for c in block) for block in CHANNELS)


class HistoNet(nn.Module):
    """X1.7 multi-label classifier.

    Args:
        classes: number of outputs (one sigmoid score per class).
        width: channel multiplier (1.0 = published; other values cannot load VGG16 weights).
        dropout: dropout rate before global max pooling (published 0.5).
        bn_momentum: batch-norm running-statistics momentum, torch convention (published Keras
            0.99 = 0.01 here; short runs need more, or their eval-mode statistics lag behind).

    Input (N, 3, H, W) float32 standardised RGB (H, W multiples of 4; 224 published);
    output (N, classes) float32 logits (pre-sigmoid scores).
    """

    def __init__(self, classes: int, width: float = 1.0, dropout: float = 0.5, bn_momentum: float = BN_MOMENTUM) -> None:
        super().__init__()
        if classes < 1:
            raise UserError(f"model.classes gives {classes} classes; expected at least 1")
        c1, c2, c3 = scaled_channels(width)
        if not 0 < bn_momentum <= 1:
            raise UserError(f"model.bn_momentum is {bn_momentum}; expected a value in (0, 1] (torch convention)")
        self.block1 = _block(c1, 3, pool=True, bn_momentum=bn_momentum)
        self.block2 = _block(c2, c1[-1], pool=True, bn_momentum=bn_momentum)
        self.block3 = _block(c3, c2[-1], pool=False, bn_momentum=bn_momentum)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c3[-1], classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Keras defaults: Glorot-uniform kernels, zero biases, BN gamma 1 and beta 0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def classes(self) -> int:
        return self.fc.out_features

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """The Grad-CAM layer: (N, 3, H, W) standardised -> (N, 256w, H/4, W/4) ReLU output of
        block3's last convolution (before its batch norm)."""
        x = self.block3[:-1](self.block2(self.block1(x)))
        return self.block3[-1].activation(x)

    def head(self, activations: torch.Tensor) -> torch.Tensor:
        """(N, 256w, h, w) Grad-CAM-layer activations -> (N, classes) logits."""
        x = self.block3[-1].bn(activations)
        x = self.dropout(self.pool(x))
        return self.fc(torch.amax(x, dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.activations(x))


def _read_state(path: str | Path) -> Mapping[str, Any]:
    """The state dict in a local VGG16 file (a bare state dict, or under ``state_dict``/``model``)."""
    return read_state_dict(path, "pretrained VGG16")


def load_vgg16_weights(net: HistoNet, path: str | Path) -> list[str]:
    """Initialise the seven convolutions from an ImageNet VGG16 state dict (torchvision names).

    Strict on the mapped layers (:data:`VGG16_MAPPING`): every ``features.{0,2,5,7,10,12,14}``
    weight and bias must be present with the published shape; other entries (deeper
    convolutions, classifier) are ignored. Batch norms and the dense layer keep their
    initialisation.

    Returns:
        Our names of the loaded tensors.

    Raises:
        UserError: unreadable file, a missing entry, or a shape that does not fit (e.g. the
            network was built with ``width`` other than 1).
    """
    state = _read_state(path)
    own = net.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    problems = []
    for ours, theirs in VGG16_MAPPING.items():
        for suffix in ("weight", "bias"):
            source, target = f"{theirs}.{suffix}", f"{ours}.{suffix}"
            if source not in state:
                problems.append(f"missing '{source}'")
            elif tuple(state[source].shape) != tuple(own[target].shape):
                problems.append(f"'{source}' is {tuple(state[source].shape)}, '{target}' needs {tuple(own[target].shape)}")
            else:
                loaded[target] = state[source].to(own[target].dtype)
    if problems:
        raise UserError(f"pretrained VGG16 file '{path}' does not fit the classifier (model.width must be 1): "
                        + "; ".join(problems[:4]) + (" ..." if len(problems) > 4 else ""))
    net.load_state_dict(loaded, strict=False)
    return list(loaded)
