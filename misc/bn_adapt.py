"""Test-time BatchNorm adaptation: normalise with statistics of the image being predicted.

A network trained with small batches keeps running BatchNorm statistics of its training
images; on an image of another stain or tissue (a frozen section, a new site) its activations
drift away from them. AdaBN (Li et al., "Revisiting Batch Normalization For Practical Domain
Adaptation", ICLR-W 2017) recomputes the statistics on the target domain before predicting.
Here the target domain is one image: its windows run once through the network with every
BatchNorm layer accumulating a cumulative mean and variance, and the statistics used to
predict are ``weight × image + (1 − weight) × trained``. The trained buffers are restored
afterwards, so each image is adapted on its own and the result does not depend on the order
of a folder.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from misc.errors import UserError


def check_adapt_weight(weight: float) -> float:
    """``weight`` as a float in [0, 1], else a UserError naming ``infer.bn_adapt``."""
    try:
        value = float(weight)
    except (TypeError, ValueError):
        raise UserError(f"infer.bn_adapt must be a number in [0, 1], got {weight!r}") from None
    if not 0.0 <= value <= 1.0:
        raise UserError(f"infer.bn_adapt must be in [0, 1], got {value}")
    return value


def tracked_batchnorms(net: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``net`` that keep running statistics."""
    return [m for m in net.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def adapted_batchnorm(net: nn.Module, weight: float, collect: Callable[[], None]) -> Iterator[None]:
    """Within the block, ``net`` normalises with statistics blended towards those ``collect`` sees.

    Args:
        net: the network, in eval mode.
        weight: share of the collected statistics, in [0, 1] (0: the trained ones unchanged,
            1: the collected ones only).
        collect: runs the network on the adaptation data (e.g. every window of one image);
            meanwhile each BatchNorm layer is in training mode with a cumulative average
            (``momentum=None``), all other layers in their current mode.
            A layer that ``collect`` never reaches (an unused branch) keeps its trained statistics.

    On exit every BatchNorm layer has its trained buffers, momentum and mode back, also when
    ``collect`` or the block raises.
    """
    weight = check_adapt_weight(weight)
    layers = tracked_batchnorms(net)
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum, m.training)
             for m in layers]
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
            layer.train()
        collect()
        seen = [layer.num_batches_tracked.item() > 0 for layer in layers]
        if layers and not any(seen):
            raise UserError("BatchNorm adaptation saw no data: the image gave no window")
        for layer, (mean, var, *_rest), share in zip(layers, saved, seen):
            layer.eval()
            share = weight if share else 0.0
            layer.running_mean.mul_(share).add_(mean, alpha=1.0 - share)
            layer.running_var.mul_(share).add_(var, alpha=1.0 - share)
        yield
    finally:
        for layer, (mean, var, count, momentum, training) in zip(layers, saved):
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
            layer.num_batches_tracked.copy_(count)
            layer.momentum = momentum
            layer.train(training)
