"""Networks with the parameter names of Distiller's example models, for running Distiller-style schedules.

Written for these tests (not Distiller's code): the module structure, and so every
`named_parameters()` name, follows Distiller's CIFAR-10 ResNets (`resnet20_cifar` ... `resnet56_cifar`:
conv1/bn1, layer1-3 of BasicBlocks with conv1/bn1/conv2/bn2 and a 1x1 `downsample` conv + BN where the
shape changes, avgpool, fc), so a schedule written for Distiller names weights that exist here.
"""
from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and an identity (or 1x1 conv) shortcut, as in Distiller's CIFAR ResNet."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu2(residual + out)


class ResNetCifar(nn.Module):
    """ResNet for 32x32 inputs: 16-32-64 channels in three stages of `blocks` BasicBlocks each."""

    def __init__(self, blocks: int, num_classes: int = 10):
        super().__init__()
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(16, blocks, 1)
        self.layer2 = self._make_layer(32, blocks, 2)
        self.layer3 = self._make_layer(64, blocks, 2)
        self.avgpool = nn.AvgPool2d(8, stride=1)
        self.fc = nn.Linear(64, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        x = self.avgpool(x)
        return self.fc(x.view(x.size(0), -1))


def resnet20_cifar(num_classes: int = 10) -> ResNetCifar:
    """Distiller's resnet20_cifar layout (3 blocks per stage)."""
    return ResNetCifar(3, num_classes)


def resnet56_cifar(num_classes: int = 10) -> ResNetCifar:
    """Distiller's resnet56_cifar layout (9 blocks per stage)."""
    return ResNetCifar(9, num_classes)
