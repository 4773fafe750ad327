"""MobileNetV2 (Sandler et al., CVPR 2018): the patch classifier of H2G-Net's detection stage.

Written here with the module names of torchvision's ``mobilenet_v2`` so that an ImageNet state
dict from torchvision (the fixture ``mobilenet_v2_state_keys.json``: 3,504,872 parameters)
loads into ``MobileNetV2(num_classes=1000)`` with ``strict=True`` and no renaming:

- ``features.0``: 3x3 conv stride 2 (3 -> 32, no bias) + BN + ReLU6 (``features.0.0``/``.0.1``);
- ``features.1`` .. ``features.17``: inverted residual blocks (expansion t, output c, repeats n,
  first stride s per row of :data:`INVERTED_RESIDUAL_SETTINGS`); a block's ``conv`` is
  ``[1x1 expand conv-BN-ReLU6 (t > 1)] -> 3x3 depthwise conv-BN-ReLU6 -> 1x1 project conv -> BN``
  (indices ``conv.0``, ``conv.1``, ``conv.2`` (conv), ``conv.3`` (BN); without expansion
  ``conv.0`` depthwise, ``conv.1`` conv, ``conv.2`` BN); identity shortcut when stride 1 and
  in = out channels;
- ``features.18``: 1x1 conv 320 -> 1280 + BN + ReLU6;
- ``classifier``: ``Dropout(0.2)`` (``classifier.0``) then ``Linear(1280, num_classes)``
  (``classifier.1``); or, with ``hidden`` set, H2G-Net's published head (``get_classifier`` in
  ``src/architectures/classifiers.py``): ``Linear(1280, hidden)`` -> ReLU -> ``Dropout(0.5)`` ->
  ``Linear(hidden, num_classes)`` (hidden 100).

Pretrained weights (:func:`imagenet_state`): every ``features.*`` entry is taken by its own name;
the 1000-class ``classifier.1.*`` entries are dropped and H2G-Net's 2-class head keeps its fresh
initialisation. ``module.`` prefixes (DataParallel) and ``{'state_dict': ...}`` wrappers are
accepted.

The network takes (N, 3, H, W) float RGB in 0-255 and standardises with the ImageNet statistics
inside ``forward``; it returns (N, num_classes) logits.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from misc.errors import UserError
from models.weights import read_state_dict

#: (expansion t, output channels c, repeats n, first stride s) per stage, as published.
INVERTED_RESIDUAL_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
DROPOUT = 0.2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_PREFIX = "classifier."


def make_divisible(value: float, divisor: int = 8) -> int:
    """Channel count rounded to a multiple of ``divisor``, never below 90 % of ``value`` (torchvision's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn_relu6(inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias, padding ``(kernel - 1) // 2``) -> BN -> ReLU6: torchvision's ``Conv2dNormActivation``."""
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 (stride) -> project (1x1, linear); residual when shapes match."""

    def __init__(self, inp: int, out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = int(round(inp * expansion))
        self.use_residual = stride == 1 and inp == out
        layers: list[nn.Module] = [conv_bn_relu6(inp, hidden, kernel=1)] if expansion != 1 else []
        layers += [
            conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 classifier with torchvision's module names.

    Args:
        num_classes: logits per image (1000 for ImageNet; H2G-Net: 2, non-tumour / tumour).
        width: channel multiplier (1.0 = published; other values cannot take ImageNet weights).
        hidden: None for torchvision's head; else the width of H2G-Net's hidden dense layer (100).
        head_dropout: dropout before the last linear layer of H2G-Net's head (0.5).
    """

    def __init__(self, num_classes: int = 2, width: float = 1.0, hidden: int | None = None,
                 head_dropout: float = 0.5) -> None:
        super().__init__()
        if not 0 < width <= 4:
            raise UserError(f"model.detect.width {width} is outside (0, 4]; 1.0 is the published MobileNetV2")
        inp = make_divisible(STEM_CHANNELS * width)
        self.last_channels = make_divisible(LAST_CHANNELS * max(1.0, width))
        layers: list[nn.Module] = [conv_bn_relu6(3, inp, stride=2)]
        for expansion, channels, repeats, stride in INVERTED_RESIDUAL_SETTINGS:
            out = make_divisible(channels * width)
            for i in range(repeats):
                layers.append(InvertedResidual(inp, out, stride if i == 0 else 1, expansion))
                inp = out
        layers.append(conv_bn_relu6(inp, self.last_channels, kernel=1))
        self.features = nn.Sequential(*layers)
        if hidden is None:
            self.classifier = nn.Sequential(nn.Dropout(DROPOUT), nn.Linear(self.last_channels, num_classes))
        else:
            self.classifier = nn.Sequential(nn.Linear(self.last_channels, int(hidden)), nn.ReLU(inplace=True),
                                            nn.Dropout(head_dropout), nn.Linear(int(hidden), num_classes))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0, persistent=False)
        self._initialise()

    def _initialise(self) -> None:
        """torchvision's initialisation: Kaiming-normal (fan-out) convs, unit BN, N(0, 0.01) linear."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(N, last_channels) float globally average-pooled features of (N, 3, H, W) RGB in 0-255."""
        x = self.features((images - self.mean) / self.std)
        return x.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, num_classes) logits of (N, 3, H, W) float RGB in 0-255."""
        return self.classifier(self.embed(images))


def _unwrap_state(checkpoint: Any, source: str) -> dict[str, torch.Tensor]:
    """The tensor mapping inside ``checkpoint`` (a state dict or ``{'state_dict': ...}``), ``module.`` stripped."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise UserError(f"{source}: not a state dict (a mapping of names to tensors) of torchvision's mobilenet_v2")
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def imagenet_state(net: MobileNetV2, checkpoint: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """``net``'s full state dict with every ``features.*`` entry taken from an ImageNet checkpoint.

    The mapping is the identity on ``features.*`` names (ours are torchvision's); the checkpoint's
    ``classifier.*`` (1000-class head) is dropped and ``net``'s own head entries are kept.

    Args:
        net: the network to receive the weights (``width`` 1.0).
        checkpoint: torchvision's ``mobilenet_v2`` state dict, optionally wrapped or ``module.``-prefixed.
        source: the file, for error messages.

    Returns:
        A state dict that ``net.load_state_dict(..., strict=True)`` accepts.

    Raises:
        UserError: missing, unexpected or wrongly shaped ``features.*`` entries (names a few of each).
    """
    given = {k: v for k, v in _unwrap_state(checkpoint, source).items() if not k.startswith(HEAD_PREFIX)}
    own = net.state_dict()
    wanted = {k: v for k, v in own.items() if not k.startswith(HEAD_PREFIX)}
    missing = sorted(set(wanted) - set(given))
    unexpected = sorted(set(given) - set(wanted))
    wrong = sorted(k for k in set(wanted) & set(given) if tuple(given[k].shape) != tuple(wanted[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{what} {names[:3]}{' ...' if len(names) > 3 else ''}" for what, names in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if names]
        raise UserError(f"{source}: not torchvision's ImageNet mobilenet_v2 for this network ({'; '.join(parts)}); "
                        "model.detect.width must be 1.0 for pretrained weights")
    return {**own, **{k: v.to(own[k].dtype) for k, v in given.items()}}


def load_imagenet_weights(net: MobileNetV2, path: str | os.PathLike) -> None:
    """Load an ImageNet ``mobilenet_v2`` file (``torch.load(weights_only=True)``) into ``net``'s features.

    Raises:
        UserError: the file is missing, unreadable, or not the expected state dict.
    """
    checkpoint = read_state_dict(path, "model.detect.pretrained (torchvision's mobilenet_v2 ImageNet state dict)")
    net.load_state_dict(imagenet_state(net, checkpoint, str(path)), strict=True)
