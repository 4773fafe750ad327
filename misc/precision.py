"""Autocast dtype and memory format of a network on a device, shared by training and inference.

Training reads ``train.amp`` (CUDA), ``train.amp_cpu`` (CPU) and ``train.channels_last``;
inference reads ``infer.amp`` (both devices) and ``infer.channels_last``. The rules are the same:
bf16 on a CPU only where it runs natively, fp16 on a GPU without bf16, and NCHW kept where
oneDNN cannot run NHWC.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 natively through oneDNN (AVX512-BF16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_dtype(device: torch.device, cuda_amp: bool, cpu_amp: bool, option: str) -> torch.dtype | None:
    """Autocast dtype: on CUDA with ``cuda_amp`` bf16 where supported, else fp16; on CPU with
    ``cpu_amp`` bf16 when the CPU has native bf16 (else a warning naming ``option`` and None);
    None (float32) otherwise."""
    if device.type == "cuda":
        if not cuda_amp:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_amp:
        if cpu_bf16_supported():
            return torch.bfloat16
        log.warning("%s: this CPU has no native bf16 (AVX512-BF16/AMX); running in float32", option)
    return None


def channels_last_allowed(net: nn.Module, wanted: bool, device: torch.device, amp_dtype: torch.dtype | None,
                          option: str) -> bool:
    """``wanted``, except on CPU under bf16 autocast for a network with dilated convolutions:
    oneDNN (torch 2.13) crashes with a segmentation fault on bf16 dilated NHWC convolutions of
    some channel counts (24 here), so those keep NCHW (with a warning naming ``option``)."""
    if not wanted:
        return False
    if device.type == "cpu" and amp_dtype == torch.bfloat16 and any(
        isinstance(module, nn.Conv2d) and max(module.dilation) > 1 for module in net.modules()
    ):
        log.warning("%s is ignored: bf16 dilated convolutions in NHWC crash oneDNN on CPU", option)
        return False
    return True
