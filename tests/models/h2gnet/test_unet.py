"""The refinement U-Net: shapes, depth from the widths, gradient flow, bad input."""

from __future__ import annotations

import pytest
import torch

from misc.errors import UserError
from models.h2gnet.unet import RefineUNet


def test_shapes_and_levels():
    net = RefineUNet([4, 8, 8], classes=2)
    assert net.multiple == 4
    x = torch.rand(2, 4, 32, 48)
    logits = net(x)
    assert logits.shape == (2, 2, 32, 48)
    probs = net.probabilities(logits)
    assert torch.allclose(probs.sum(1), torch.ones(2, 32, 48))
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_published_network_fits_a_1024_grid():
    net = RefineUNet([8, 16, 32, 64, 128, 128, 256, 256, 512], decoder_dropout=0.1)
    assert net.multiple == 256 and 1024 // net.multiple == 4
    assert len(net.decoder) == 8
    # decoder channels mirror the encoder's (published 256, 256, 128, 128, 64, 32, 16, 8 from the bottom up)
    assert [block[0].out_channels for block in reversed(net.decoder)] == [256, 256, 128, 128, 64, 32, 16, 8]
    assert net.decoder[7][0].in_channels == 256 + 512                  # [skip, upsampled bottom]
    assert not any(isinstance(m, torch.nn.Dropout2d) for m in net.encoder.modules())
    assert sum(isinstance(m, torch.nn.Dropout2d) for m in net.decoder.modules()) == 16


def test_side_not_a_multiple_is_an_error():
    with pytest.raises(UserError, match="multiple of 4"):
        RefineUNet([4, 8, 8])(torch.rand(1, 4, 30, 32))
    with pytest.raises(UserError, match="at least 2"):
        RefineUNet([4])
    with pytest.raises(UserError, match="decoder_dropout"):
        RefineUNet([4, 8], decoder_dropout=1.0)
