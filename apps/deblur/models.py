"""DeblurGAN's networks: the ResnetGenerator (what is deployed and compressed) and the PatchGAN critic.

The generator follows Kupyn et al. (2018) layer for layer, with their parameter names (`model.1.weight`
is the 7x7 head conv, `model.10.conv_block.1.weight` the first conv of the first residual block, ...):
reflection-padded 7x7 conv, two stride-2 3x3 convs down, `n_blocks` residual blocks
(pad-conv-norm-ReLU-[dropout]-pad-conv-norm added to the trunk), two stride-2 ConvTranspose2d up, a
reflection-padded 7x7 conv to RGB and tanh. The network learns the residual: output =
clamp(input + tanh(...), 0, 1) on images scaled to [0, 1]. Inputs of any size work: the image is
reflection-padded to a multiple of 4 (two stride-2 stages) and the output cropped back.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("instance", "batch")


def norm_layer(kind: str, channels: int, affine: bool | None = None) -> nn.Module:
    """DeblurGAN's normalisation: InstanceNorm without affine parameters, or BatchNorm with them."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=bool(affine))
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True if affine is None else affine)
    raise ValueError(f"unknown norm '{kind}'; valid: {', '.join(NORMS)}")


class ResnetBlock(nn.Module):
    """pad-conv3x3-norm-ReLU-[dropout]-pad-conv3x3-norm, added to the input (channels kept).

    Without dropout an Identity keeps the dropout's place, so the names are those of DeblurGAN's
    default (dropout) generator: conv_block.1 and conv_block.6.
    """

    def __init__(self, dim: int, norm: str, use_bias: bool, dropout: float, affine: bool | None = None):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), norm_layer(norm, dim, affine), nn.ReLU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), norm_layer(norm, dim, affine))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """DeblurGAN's generator on RGB images in [0, 1] (see the module docstring).

    `ngf` filters after the head (x2, x4 after each down stage), `n_blocks` residual blocks at 1/4
    resolution, `norm` 'instance' (DeblurGAN's default, no affine parameters unless `affine`) or
    'batch'; convs followed by InstanceNorm have a bias, those followed by BatchNorm do not (as DeblurGAN).
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 9, norm: str = "instance", dropout: float = 0.0,
                 in_channels: int = 3, affine: bool | None = None):
        super().__init__()
        self.multiple = 4
        bias = norm == "instance"
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=bias),
                                   norm_layer(norm, ngf, affine), nn.ReLU()]
        for i in range(2):
            c = ngf * 2 ** i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=bias), norm_layer(norm, 2 * c, affine),
                       nn.ReLU()]
        layers += [ResnetBlock(4 * ngf, norm, bias, dropout, affine) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                       norm_layer(norm, c // 2, affine), nn.ReLU()]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, in_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        tail = self.model[-2]
        nn.init.normal_(tail.weight, std=1e-4)  # an untrained generator returns its input: it learns the residual
        nn.init.zeros_(tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        padded = F.pad(x, (0, (-w) % self.multiple, 0, (-h) % self.multiple), mode="reflect")
        out = torch.clamp(padded + self.model(padded), 0.0, 1.0)
        return out[..., :h, :w]


class NLayerDiscriminator(nn.Module):
    """PatchGAN critic (pix2pix / DeblurGAN, 3 layers): 4x4 convs, stride 2 thrice, LeakyReLU(0.2), one
    score per ~70x70 patch; no sigmoid (WGAN-GP)."""

    def __init__(self, ndf: int = 64, n_layers: int = 3, norm: str = "instance", in_channels: int = 3):
        super().__init__()
        bias = norm == "instance"
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=2), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2 if n < n_layers else 1, padding=2, bias=bias),
                       norm_layer(norm, ndf * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=2))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


#: --model name -> generator constructor arguments (--ngf / --n_blocks / --dropout / --norm override them).
#: DeblurGAN-CPU has a quarter of the paper's widths and no dropout, so a CPU trains it in minutes.
PRESETS: dict[str, dict[str, Any]] = {
    "DeblurGAN-CPU": {"ngf": 16, "n_blocks": 9, "dropout": 0.0},
    "DeblurGAN": {"ngf": 64, "n_blocks": 9, "dropout": 0.5},
}
#: --model name -> the critic's first-layer width (--ndf overrides it): a quarter of the paper's again.
CRITIC_WIDTHS: dict[str, int] = {"DeblurGAN-CPU": 16, "DeblurGAN": 64}


def build_generator(name: str, kwargs: dict[str, Any] | None = None) -> ResnetGenerator:
    """The generator of checkpoint architecture `name` ('ResnetGenerator') with constructor `kwargs`."""
    if name != "ResnetGenerator":
        raise ValueError(f"unknown deblurring generator '{name}'; valid: ResnetGenerator")
    return ResnetGenerator(**(kwargs or {}))


def build_critic(name: str, kwargs: dict[str, Any] | None = None) -> NLayerDiscriminator:
    """The critic of checkpoint architecture `name` ('NLayerDiscriminator') with constructor `kwargs`."""
    if name != "NLayerDiscriminator":
        raise ValueError(f"unknown critic '{name}'; valid: NLayerDiscriminator")
    return NLayerDiscriminator(**(kwargs or {}))
