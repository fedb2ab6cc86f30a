"""Narrow-output convolutions by taps: the same values as conv2d, and only for the convs it covers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from apputils.conv_taps import MAX_OUT_CHANNELS, conv2d_by_taps, runs_by_taps


@pytest.mark.parametrize("cin, cout, kernel, padding, dilation, bias", [
    (16, 1, 5, 2, 1, True),         # an SR output layer: 'same' padding
    (8, 3, 3, 0, 1, False),         # no padding: the output shrinks
    (8, 2, (3, 5), (1, 3), 1, True),  # rectangular kernel, padding wider than needed on one axis
    (6, MAX_OUT_CHANNELS, 3, 2, 2, True),  # dilated
    (5, 1, 7, 1, 1, True),          # padding smaller than the kernel's reach
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_equals_conv2d(cin, cout, kernel, padding, dilation, bias, channels_last):
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        if bias:
            conv.bias.copy_(torch.randn(cout, generator=g))
    x = torch.randn(2, cin, 13, 17, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert runs_by_taps(conv)
    with torch.no_grad():
        expected, got = conv(x), conv2d_by_taps(x, conv)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


class Conv2dSubclass(nn.Conv2d):
    """A subclass may compute something else in forward (a quantized conv does)."""


@pytest.mark.parametrize("conv, covered", [
    (nn.Conv2d(8, 1, 3, padding=1), True),
    (nn.Conv2d(8, MAX_OUT_CHANNELS + 1, 3, padding=1), False),  # wide output: conv2d is efficient
    (nn.Conv2d(8, 1, 1), False),                                # 1x1: already a matrix product
    (nn.Conv2d(8, 1, 3, stride=2), False),
    (nn.Conv2d(8, 2, 3, groups=2), False),
    (nn.Conv2d(8, 1, 3, padding="same"), False),
    (nn.Conv2d(8, 1, 3, padding=1, padding_mode="reflect"), False),
    (Conv2dSubclass(8, 1, 3, padding=1), False),
    (nn.Linear(8, 1), False),
])
def test_covers_only_plain_narrow_stride_one_convs(conv, covered):
    assert runs_by_taps(conv) is covered
