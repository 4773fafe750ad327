"""Autocast dtype and memory-format rules shared by training and inference."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from misc import precision

CPU = torch.device("cpu")


def test_cpu_autocast_follows_the_cpu_flag_only() -> None:
    assert precision.autocast_dtype(CPU, cuda_amp=True, cpu_amp=False, option="x") is None


def test_cpu_autocast_is_bf16_on_a_cpu_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    assert precision.autocast_dtype(CPU, cuda_amp=False, cpu_amp=True, option="x") == torch.bfloat16


def test_cpu_without_native_bf16_runs_float32_and_names_the_option(monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert precision.autocast_dtype(CPU, cuda_amp=True, cpu_amp=True, option="infer.amp") is None
    assert "infer.amp" in caplog.text


def test_channels_last_is_kept_off_for_bf16_dilated_convolutions_on_cpu(caplog: pytest.LogCaptureFixture) -> None:
    dilated = nn.Sequential(nn.Conv2d(3, 4, 3, padding=2, dilation=2))
    with caplog.at_level(logging.WARNING):
        assert not precision.channels_last_allowed(dilated, True, CPU, torch.bfloat16, "infer.channels_last")
    assert "infer.channels_last" in caplog.text
    assert precision.channels_last_allowed(dilated, True, CPU, None, "infer.channels_last")
