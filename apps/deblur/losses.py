"""DeblurGAN's losses: the content loss (L1, or perceptual on VGG19 conv3_3) and WGAN-GP's gradient penalty.

The perceptual loss needs VGG19's ImageNet weights, which cannot be downloaded here: the user passes
torchvision's state dict file (vgg19-dcbb9e9d.pth, keys `features.0.weight` ...). It is read with
`torch.load(weights_only=True)` into VGG19's feature layers up to conv3_3 (`features.0` to
`features.14`), built here with torchvision's layer indices, so torchvision itself is not needed.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from apputils.execution_env import UserError

#: VGG19's convolutions up to conv3_3: (index in torchvision's `features`, in channels, out channels)
VGG19_TO_CONV3_3 = ((0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
                    (14, 256, 256))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_to_conv3_3() -> nn.Sequential:
    """torchvision's vgg19().features[:15]: conv / ReLU / max-pool layers at torchvision's indices."""
    layers: list[nn.Module] = []
    convs = {i: (cin, cout) for i, cin, cout in VGG19_TO_CONV3_3}
    for i in range(VGG19_TO_CONV3_3[-1][0] + 1):
        if i in convs:
            layers.append(nn.Conv2d(*convs[i], kernel_size=3, padding=1))
        elif i in (4, 9):
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class PerceptualLoss(nn.Module):
    """MSE between VGG19 conv3_3 features of the output and of the sharp image (DeblurGAN's content loss).

    Images in [0, 1] are normalised with ImageNet's mean and std first; the VGG weights are frozen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg19_to_conv3_3()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path) -> PerceptualLoss:
        """The loss with torchvision's VGG19 weights read from `path` (weights_only); UserError if unusable."""
        loss = cls()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for foreign files
            raise UserError(f"--perceptual_weights: cannot read '{path}' as a state dict ({type(err).__name__}: "
                            f"{str(err)[:200]}); give torchvision's VGG19 weights file (vgg19-dcbb9e9d.pth)") from err
        if not isinstance(state, dict):
            raise UserError(f"--perceptual_weights: '{path}' holds a {type(state).__name__}, not a state dict; "
                            "give torchvision's VGG19 weights file (vgg19-dcbb9e9d.pth)")
        wanted = loss.state_dict()
        missing = [k for k in wanted if k not in state]
        if missing:
            raise UserError(f"--perceptual_weights: '{path}' lacks {', '.join(missing[:3])}"
                            f"{' ...' if len(missing) > 3 else ''}; expected a torchvision VGG19 state dict "
                            "(keys features.0.weight ... features.14.bias)")
        wrong = [f"{k} {tuple(state[k].shape)} (VGG19: {tuple(v.shape)})" for k, v in wanted.items()
                 if tuple(state[k].shape) != tuple(v.shape)]
        if wrong:
            raise UserError(f"--perceptual_weights: '{path}' is not VGG19: {wrong[0]}; expected a torchvision "
                            "VGG19 state dict (vgg19-dcbb9e9d.pth)")
        loss.load_state_dict({k: state[k] for k in wanted})
        return loss

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Always in evaluation mode: the VGG is a fixed feature extractor."""
        return super().train(False)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        both = self.features((torch.cat([output, target]) - self.mean) / self.std)
        out, tgt = both.chunk(2)
        return F.mse_loss(out, tgt.detach())


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): (||grad critic(x)|| - 1)^2 at random points between real and fake."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    score = critic(mixed)
    (grad,) = torch.autograd.grad(score.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
