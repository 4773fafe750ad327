"""``train.py --summary``: a layer table of a network."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn


def network_summary(net: nn.Module, example: torch.Tensor) -> str:
    """A layer table of ``net`` on ``example``: leaf modules, output shapes, parameter counts.

    Ends with the line ``params: N`` (all parameters of the network).
    """
    rows: list[tuple[str, str, str, int]] = []
    hooks = []

    def shape_of(output: Any) -> str:
        if isinstance(output, torch.Tensor):
            return str(tuple(output.shape))
        if isinstance(output, dict):
            return ", ".join(f"{k}: {shape_of(v)}" for k, v in output.items())
        if isinstance(output, (list, tuple)):
            return ", ".join(shape_of(v) for v in output)
        return type(output).__name__

    def hook(name: str, module: nn.Module, _inputs: Any, output: Any) -> None:
        params = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append((name, type(module).__name__, shape_of(output), params))

    for name, module in net.named_modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(functools.partial(hook, name)))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            output = net(example)
    finally:
        for handle in hooks:
            handle.remove()
        net.train(was_training)
    width = max([len(r[0]) for r in rows] + [5])
    lines = [f"{'layer':<{width}}  {'type':<20}  {'params':>10}  output"]
    lines += [f"{name:<{width}}  {kind:<20}  {params:>10,}  {shape}" for name, kind, shape, params in rows]
    lines.append(f"input: {tuple(example.shape)}  output: {shape_of(output)}")
    lines.append(f"params: {sum(p.numel() for p in net.parameters())}")
    return "\n".join(lines)
