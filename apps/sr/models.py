"""Super-resolution networks on the Y channel.

C2SRCNN and SRCNN work on the bicubic-upscaled image (pre-upsampling); ESPCN, FSRCNN and EDSR take
the low-resolution image and upsample inside the network (post-upsampling). `INPUT_KIND` tells the app
which tensor a model takes. C2SRCNN's parameter names are fixed by the original design's schedules
(`mid_part.0.0.weight`, `mid_part.1.weight`, ..., `mid_part.9.0.weight`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.modules import unwrap


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


def _fsrcnn_body(num_channels: int, d: int, s: int, m: int) -> tuple[nn.Sequential, nn.Sequential]:
    """FSRCNN's first_part (5x5 conv + PReLU) and mid_part (1x1 shrink, m 3x3 convs, 1x1 expand, each
    with PReLU), laid out so the parameters are mid_part.0.0, mid_part.1, ..., mid_part.9.0 (m = 4)."""
    first = nn.Sequential(_conv(num_channels, d, 5), nn.PReLU(d))
    mid: list[nn.Module] = [nn.Sequential(_conv(d, s, 1), nn.PReLU(s))]
    for _ in range(m):
        mid += [_conv(s, s, 3), nn.PReLU(s)]
    mid.append(nn.Sequential(_conv(s, d, 1), nn.PReLU(d)))
    return first, nn.Sequential(*mid)


class C2SRCNN(nn.Module):
    """FSRCNN-style body run at HR resolution on the bicubic-upscaled Y image, plus a global residual.

    first_part: 5x5 conv + PReLU; mid_part: 1x1 shrink, four 3x3 convs, 1x1 expand (each with PReLU);
    last_part: 5x5 conv back to one channel, added to the bicubic input. The last conv starts near
    zero, so an untrained network already equals bicubic and training only has to learn the detail.
    """

    INPUT_KIND = "bicubic"

    def __init__(self, num_channels: int = 1, upscale_factor: int = 2, d: int = 56, s: int = 12, m: int = 4):
        super().__init__()
        self.upscale_factor = upscale_factor
        self.first_part, self.mid_part = _fsrcnn_body(num_channels, d, s, m)
        self.last_part = _conv(d, num_channels, 5)
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, a=0.25, nonlinearity="leaky_relu")
                nn.init.zeros_(mod.bias)
        nn.init.normal_(self.last_part.weight, std=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.last_part(self.mid_part(self.first_part(x)))


class SRCNN(nn.Module):
    """Dong et al.'s 9-5-5 SRCNN on the bicubic-upscaled image (zero-padded, so the size is kept)."""

    INPUT_KIND = "bicubic"

    def __init__(self, num_channels: int = 1, upscale_factor: int = 2, n1: int = 64, n2: int = 32):
        super().__init__()
        self.upscale_factor = upscale_factor
        self.conv1 = _conv(num_channels, n1, 9)
        self.conv2 = _conv(n1, n2, 5)
        self.conv3 = _conv(n2, num_channels, 5)
        self.relu = nn.ReLU(inplace=True)
        nn.init.normal_(self.conv3.weight, std=1e-3)
        nn.init.zeros_(self.conv3.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv3(self.relu(self.conv2(self.relu(self.conv1(x)))))


class ESPCN(nn.Module):
    """Shi et al.'s efficient sub-pixel network: LR features, then PixelShuffle to HR."""

    INPUT_KIND = "lr"

    def __init__(self, num_channels: int = 1, upscale_factor: int = 2):
        super().__init__()
        self.upscale_factor = upscale_factor
        self.body = nn.Sequential(_conv(num_channels, 64, 5), nn.Tanh(), _conv(64, 32, 3), nn.Tanh(),
                                  _conv(32, num_channels * upscale_factor ** 2, 3))
        self.pixel_shuffle = nn.PixelShuffle(upscale_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pixel_shuffle(self.body(x))


class FSRCNN(nn.Module):
    """Dong et al.'s FSRCNN: LR feature extraction, shrink / map / expand, 9x9 transposed conv to HR."""

    INPUT_KIND = "lr"

    def __init__(self, num_channels: int = 1, upscale_factor: int = 2, d: int = 56, s: int = 12, m: int = 4):
        super().__init__()
        self.upscale_factor = upscale_factor
        self.first_part, self.mid_part = _fsrcnn_body(num_channels, d, s, m)
        self.last_part = nn.ConvTranspose2d(d, num_channels, 9, stride=upscale_factor, padding=4,
                                            output_padding=upscale_factor - 1)
        nn.init.normal_(self.last_part.weight, std=1e-3)
        nn.init.zeros_(self.last_part.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_part(self.mid_part(self.first_part(x)))


class EDSR(nn.Module):
    """Lim et al.'s EDSR, small: head conv, residual blocks (conv-ReLU-conv + skip), body conv plus a
    skip from the head, PixelShuffle upsampler (one x2/x3 stage, two for x4), tail conv.

    Every layer has `features` channels on the LR image, the width at which INT8 kernels pay off
    (C2SRCNN's 12-channel layers at HR resolution run faster in FP32).
    """

    INPUT_KIND = "lr"

    def __init__(self, num_channels: int = 1, upscale_factor: int = 2, features: int = 64, blocks: int = 8):
        super().__init__()
        self.upscale_factor = upscale_factor
        c = features
        self.head = _conv(num_channels, c, 3)
        self.blocks = nn.ModuleList(nn.Sequential(_conv(c, c, 3), nn.ReLU(), _conv(c, c, 3)) for _ in range(blocks))
        self.body = _conv(c, c, 3)
        stages = [2, 2] if upscale_factor == 4 else [upscale_factor]
        self.up = nn.Sequential(*[m for s in stages for m in (_conv(c, c * s * s, 3), nn.PixelShuffle(s))])
        self.tail = _conv(c, num_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        r = h
        for block in self.blocks:
            r = r + block(r)
        return self.tail(self.up(self.body(r) + h))


MODELS: dict[str, type[nn.Module]] = {"C2SRCNN": C2SRCNN, "ESPCN": ESPCN, "FSRCNN": FSRCNN, "SRCNN": SRCNN,
                                      "EDSR": EDSR}


def build_model(name: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Build architecture `name` (a key of MODELS) with constructor `kwargs`."""
    if name not in MODELS:
        raise ValueError(f"unknown SR model '{name}'; valid models: {', '.join(MODELS)}")
    return MODELS[name](**(kwargs or {}))


def input_kind(model: nn.Module) -> str:
    """'bicubic' when the model takes the bicubic-upscaled image, 'lr' when it takes the LR image."""
    return getattr(unwrap(model), "INPUT_KIND", "bicubic")
