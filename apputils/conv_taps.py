"""Convolutions with few output channels as one matrix product plus shifted sums.

CPU convolution kernels are slow for layers with many input but few output channels, such as an
image network's output layer (C2SRCNN's 56 -> 1 channel 5x5 conv costs about 3x more per MAC than
its 1 -> 56 input conv). Such a layer equals a matrix product that gives one plane per
(output channel, kernel tap) — `(out * kh * kw) x in` times `in x (H * W)`, an efficient BLAS call —
followed by adding each tap's plane, shifted by the tap's offset, into the output. The sums run in
another order than conv2d's, so results differ from it in the last float digits.
"""
from __future__ import annotations

import torch
from torch import nn

#: the most output channels a convolution may have to be run by taps (the planes grow with it)
MAX_OUT_CHANNELS = 4


def runs_by_taps(conv: nn.Module) -> bool:
    """Whether `conv` is a plain Conv2d that `conv2d_by_taps` computes: few outputs, a kernel
    larger than 1x1, stride 1, no groups, zero padding given as numbers."""
    return (type(conv) is nn.Conv2d and conv.groups == 1 and conv.stride == (1, 1)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and conv.out_channels <= MAX_OUT_CHANNELS and conv.kernel_size != (1, 1))


def conv2d_by_taps(x: torch.Tensor, conv: nn.Conv2d, planes: torch.Tensor | None = None) -> torch.Tensor:
    """`conv(x)` for a convolution `runs_by_taps` accepts and a batched 4-D input, computed as a
    matrix product into per-tap planes plus shifted sums (output in NCHW layout). `planes`, when
    given, is a buffer for the per-tap planes (any shape; resized as needed)."""
    n, c, h, w = x.shape
    weight = conv.weight
    out_c, _, kh, kw = weight.shape
    (ph, pw), (dh, dw) = conv.padding, conv.dilation
    out_h, out_w = h + 2 * ph - dh * (kh - 1), w + 2 * pw - dw * (kw - 1)
    taps = weight.permute(0, 2, 3, 1).reshape(out_c * kh * kw, c)
    # x.reshape is a view for NCHW and for channels-last inputs alike; matmul reads either layout
    if planes is not None:
        planes = planes.resize_(n, out_c * kh * kw, h * w)
    planes = torch.matmul(taps, x.reshape(n, c, h * w), out=planes).view(n, out_c, kh * kw, h, w)
    if conv.bias is not None:
        out = conv.bias.view(1, out_c, 1, 1).expand(n, out_c, out_h, out_w).clone()
    else:
        out = x.new_zeros(n, out_c, out_h, out_w)
    for i in range(kh):
        dy = i * dh - ph
        rows = slice(max(0, -dy), min(out_h, h - dy))
        for j in range(kw):
            dx = j * dw - pw
            cols = slice(max(0, -dx), min(out_w, w - dx))
            if rows.start < rows.stop and cols.start < cols.stop:
                out[:, :, rows, cols] += planes[:, :, i * kw + j, rows.start + dy:rows.stop + dy,
                                                cols.start + dx:cols.stop + dx]
    return out


class TapsConv:
    """`conv2d_by_taps` for one convolution, reusing its per-tap planes between calls: on CPU, freshly
    allocated large buffers cost page faults comparable to the matrix product itself."""

    def __init__(self, conv: nn.Conv2d):
        if not runs_by_taps(conv):
            raise ValueError(f"{conv} cannot run by taps: see apputils.conv_taps.runs_by_taps")
        self.conv = conv
        self.planes: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.planes is None or self.planes.device != x.device or self.planes.dtype != x.dtype:
            self.planes = x.new_empty(0)
        return conv2d_by_taps(x, self.conv, self.planes)
