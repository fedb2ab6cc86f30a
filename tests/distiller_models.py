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


# ---- The other networks Distiller's example schedules were written for ---------------------------------------
# Written for these tests with the same module structure, hence the same named_parameters() / named_modules(),
# as Distiller's models (CIFAR plain / pre-activation ResNets, VGG, its AlexNet-BN, MobileNet and its torchvision
# ResNets with numbered ReLUs), torchvision's AlexNet / VGG and pretrainedmodels' ResNeXt. `width` scales the
# ImageNet networks' channel counts (1.0: the real sizes); pooling before the classifier is adaptive so small
# inputs work (it has no parameters, so no name changes).


def _w(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _cbr(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class PlainBlock(nn.Module):
    """Distiller's plain-CIFAR block: conv1-bn1-relu1-conv2-bn2-relu2, no shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = _cbr(inplanes, planes, 3, stride, 1)
        self.conv2, self.bn2, self.relu2 = _cbr(planes, planes, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))


class PreactBlockCifar(nn.Module):
    """Distiller's CIFAR pre-activation block: pre_bn, pre_relu, conv1, bn, relu, conv2, and a parameter-free
    downsample (average pooling + zero channels) where the shape changes."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.pre_bn, self.pre_relu = nn.BatchNorm2d(inplanes), nn.ReLU()
        self.conv1, self.bn, self.relu = _cbr(inplanes, planes, 3, stride, 1)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        pad = (planes - inplanes) // 2
        self.downsample = (nn.Sequential(nn.AvgPool2d(2), nn.ConstantPad3d((0, 0, 0, 0, pad, pad), 0.0))
                           if stride != 1 or pad else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu(self.bn(self.conv1(self.pre_relu(self.pre_bn(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class CifarNet(nn.Module):
    """The 16-32-64 CIFAR trunk of Distiller's plain20_cifar (conv1/bn1/relu) and preact_resnet*_cifar (conv1 then
    final_bn/final_relu)."""

    def __init__(self, block: type[nn.Module], blocks: int, preact: bool, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        if not preact:
            self.bn1, self.relu = nn.BatchNorm2d(16), nn.ReLU()
        self.preact = preact
        widths, inplanes = (16, 32, 64), 16
        for i, planes in enumerate(widths):
            layers = [block(inplanes, planes, 1 if i == 0 else 2)] + [block(planes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            inplanes = planes
        if preact:
            self.final_bn, self.final_relu = nn.BatchNorm2d(64), nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x) if self.preact else self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.preact:
            x = self.final_relu(self.final_bn(x))
        return self.fc(self.avgpool(x).flatten(1))


def plain20_cifar(num_classes: int = 10) -> CifarNet:
    """Distiller's plain20_cifar: ResNet-20's layout without shortcuts."""
    return CifarNet(PlainBlock, 3, False, num_classes)


def preact_resnet20_cifar(num_classes: int = 10) -> CifarNet:
    """Distiller's preact_resnet20_cifar."""
    return CifarNet(PreactBlockCifar, 3, True, num_classes)


class TVBasicBlock(nn.Module):
    """torchvision's BasicBlock as Distiller numbers it: conv1, bn1, relu1, conv2, bn2, downsample, relu2."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = _cbr(inplanes, planes, 3, stride, 1)
        self.conv2, self.bn2 = _cbr(planes, planes, 3, 1, 1)[:2]
        self.downsample, self.relu2 = downsample, nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + (x if self.downsample is None else self.downsample(x)))


class TVBottleneck(nn.Module):
    """torchvision's Bottleneck as Distiller numbers it: conv1-3, bn1-3, relu1-3, downsample."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64):
        super().__init__()
        mid = int(planes * (base_width / 64.0)) * groups
        self.conv1, self.bn1, self.relu1 = _cbr(inplanes, mid, 1)
        self.conv2, self.bn2, self.relu2 = _cbr(mid, mid, 3, stride, 1, groups)
        self.conv3, self.bn3 = _cbr(mid, planes * 4, 1)[:2]
        self.downsample, self.relu3 = downsample, nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))))
        return self.relu3(out + (x if self.downsample is None else self.downsample(x)))


class TVResNet(nn.Module):
    """torchvision's ImageNet ResNet (conv1, bn1, relu, maxpool, layer1-4, avgpool, fc)."""

    def __init__(self, block: type[nn.Module], layers: list[int], width: float = 1.0, num_classes: int = 1000):
        super().__init__()
        self.inplanes = _w(64, width)
        self.conv1, self.bn1, self.relu = _cbr(3, self.inplanes, 7, 2, 3)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, n in enumerate(layers):
            planes, stride = _w(64 * 2 ** i, width), 1 if i == 0 else 2
            down = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                down = nn.Sequential(*_cbr(self.inplanes, planes * block.expansion, 1, stride)[:2])
            blocks = [block(self.inplanes, planes, stride, down)]
            self.inplanes = planes * block.expansion
            blocks += [block(self.inplanes, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet18(width: float = 1.0, num_classes: int = 1000) -> TVResNet:
    """torchvision's resnet18 with Distiller's numbered ReLUs."""
    return TVResNet(TVBasicBlock, [2, 2, 2, 2], width, num_classes)


def resnet50(width: float = 1.0, num_classes: int = 1000) -> TVResNet:
    """torchvision's resnet50 with Distiller's numbered ReLUs."""
    return TVResNet(TVBottleneck, [3, 4, 6, 3], width, num_classes)


class PreactBlockImagenet(nn.Module):
    """Distiller's ImageNet pre-activation block: pre_bn / pre_relu (None when not preactivated), conv1, bn1_2,
    relu1_2, conv2, downsample.0."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, preactivate: bool = True):
        super().__init__()
        self.pre_bn = nn.BatchNorm2d(inplanes) if preactivate else None
        self.pre_relu = nn.ReLU() if preactivate else None
        self.conv1, self.bn1_2, self.relu1_2 = _cbr(inplanes, planes, 3, stride, 1)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False))
                           if stride != 1 or inplanes != planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = x if self.pre_bn is None else self.pre_relu(self.pre_bn(x))
        out = self.conv2(self.relu1_2(self.bn1_2(self.conv1(preact))))
        return out + (x if self.downsample is None else self.downsample(preact))


class PreactResNet(nn.Module):
    """Distiller's preact_resnet18 (conv1, bn1, relu1, maxpool, layer1-4, final_bn, final_relu, avgpool, fc)."""

    def __init__(self, layers: list[int], width: float = 1.0, num_classes: int = 1000):
        super().__init__()
        inplanes = _w(64, width)
        self.conv1, self.bn1, self.relu1 = _cbr(3, inplanes, 7, 2, 3)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, n in enumerate(layers):
            planes, stride = _w(64 * 2 ** i, width), 1 if i == 0 else 2
            blocks = [PreactBlockImagenet(inplanes, planes, stride, preactivate=stride != 1)]
            blocks += [PreactBlockImagenet(planes, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = planes
        self.final_bn, self.final_relu = nn.BatchNorm2d(inplanes), nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu1(self.bn1(self.conv1(x))))
        x = self.final_relu(self.final_bn(self.layer4(self.layer3(self.layer2(self.layer1(x))))))
        return self.fc(self.avgpool(x).flatten(1))


def preact_resnet18(width: float = 1.0, num_classes: int = 1000) -> PreactResNet:
    """Distiller's preact_resnet18."""
    return PreactResNet([2, 2, 2, 2], width, num_classes)


class FeaturesClassifier(nn.Module):
    """AlexNet / VGG: `features`, an optional adaptive `avgpool`, then `classifier` on the flattened output."""

    def __init__(self, features: nn.Sequential, classifier: nn.Module, pool: int | None):
        super().__init__()
        self.features = features
        if pool is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(pool)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if hasattr(self, "avgpool"):
            x = self.avgpool(x)
        return self.classifier(x.flatten(1))


def alexnet(width: float = 1.0, num_classes: int = 1000) -> FeaturesClassifier:
    """torchvision's alexnet: features.{0,3,6,8,10} convs, classifier.{1,4,6} linears."""
    c = [_w(n, width) for n in (64, 192, 384, 256, 256)]
    fc = _w(4096, width)
    features = nn.Sequential(
        nn.Conv2d(3, c[0], 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c[0], c[1], 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c[1], c[2], 3, padding=1), nn.ReLU(), nn.Conv2d(c[2], c[3], 3, padding=1), nn.ReLU(),
        nn.Conv2d(c[3], c[4], 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
    classifier = nn.Sequential(nn.Dropout(), nn.Linear(c[4] * 36, fc), nn.ReLU(), nn.Dropout(), nn.Linear(fc, fc),
                               nn.ReLU(), nn.Linear(fc, num_classes))
    return FeaturesClassifier(features, classifier, 6)


def alexnet_bn(width: float = 1.0, num_classes: int = 1000) -> FeaturesClassifier:
    """Distiller's alexnet_bn (grouped convs, BatchNorm after each conv and hidden linear); takes 224x224 inputs."""
    c = [_w(n, width) for n in (96, 256, 384, 384, 256)]
    fc = _w(4096, width)
    features = nn.Sequential(
        nn.Conv2d(3, c[0], 12, 4), nn.ReLU(),
        nn.Conv2d(c[0], c[1], 5, padding=2, groups=2, bias=False), nn.BatchNorm2d(c[1]),
        nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(),
        nn.Conv2d(c[1], c[2], 3, padding=1, bias=False), nn.BatchNorm2d(c[2]), nn.MaxPool2d(3, 2, 1), nn.ReLU(),
        nn.Conv2d(c[2], c[3], 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(c[3]), nn.ReLU(),
        nn.Conv2d(c[3], c[4], 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(c[4]), nn.MaxPool2d(3, 2),
        nn.ReLU())
    classifier = nn.Sequential(nn.Linear(c[4] * 36, fc, bias=False), nn.BatchNorm1d(fc), nn.ReLU(),
                               nn.Linear(fc, fc, bias=False), nn.BatchNorm1d(fc), nn.ReLU(), nn.Linear(fc, num_classes))
    return FeaturesClassifier(features, classifier, None)


VGG_CFG = {16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
           19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]}


def _vgg_features(depth: int, width: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    cin = 3
    for v in VGG_CFG[depth]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, _w(v, width), 3, padding=1), nn.ReLU()]
            cin = _w(v, width)
    return nn.Sequential(*layers), cin


def vgg16_cifar(width: float = 1.0, num_classes: int = 10) -> FeaturesClassifier:
    """Distiller's vgg16_cifar: torchvision's VGG-16 features and one linear `classifier`."""
    features, c = _vgg_features(16, width)
    return FeaturesClassifier(features, nn.Linear(c, num_classes), None)


def vgg19(width: float = 1.0, num_classes: int = 1000) -> FeaturesClassifier:
    """torchvision's vgg19: features.{0,2,5,...,34} convs, avgpool, classifier.{0,3,6} linears."""
    features, c = _vgg_features(19, width)
    fc = _w(4096, width)
    classifier = nn.Sequential(nn.Linear(c * 49, fc), nn.ReLU(), nn.Dropout(), nn.Linear(fc, fc), nn.ReLU(),
                               nn.Dropout(), nn.Linear(fc, num_classes))
    return FeaturesClassifier(features, classifier, 7)


class MobileNet(nn.Module):
    """Distiller's MobileNet v1: model.0 conv-bn-relu, model.1-13 depthwise-separable blocks (model.N.0 depthwise,
    model.N.3 pointwise conv), model.14 pooling, fc."""

    def __init__(self, width: float = 1.0, num_classes: int = 1000):
        super().__init__()
        c = [max(_w(n, width), 8) for n in (32, 64, 128, 256, 512, 1024)]
        plan = [(c[0], c[1], 1), (c[1], c[2], 2), (c[2], c[2], 1), (c[2], c[3], 2), (c[3], c[3], 1),
                (c[3], c[4], 2)] + [(c[4], c[4], 1)] * 5 + [(c[4], c[5], 2), (c[5], c[5], 1)]
        blocks = [nn.Sequential(*_cbr(3, c[0], 3, 2, 1))]
        blocks += [nn.Sequential(*_cbr(cin, cin, 3, s, 1, groups=cin), *_cbr(cin, cout, 1)) for cin, cout, s in plan]
        self.model = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(c[5], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.model(x).flatten(1))


def mobilenet(width: float = 1.0, num_classes: int = 1000) -> MobileNet:
    """Distiller's ImageNet mobilenet."""
    return MobileNet(width, num_classes)


class Branches(nn.Sequential):
    """Applies each child to the same input and returns their outputs (pretrainedmodels' LambdaMap)."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return [branch(x) for branch in self]


class SumBranches(nn.Module):
    """Adds the outputs of a Branches module (pretrainedmodels' LambdaReduce)."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return xs[0] + xs[1]


def resnext101_32x4d(width: float = 1.0, num_classes: int = 1000) -> nn.Module:
    """pretrainedmodels' resnext101_32x4d: features.0-3 stem, features.4-7 stages whose block k is
    features.S.k.0.{0: main, 1: shortcut}; the main path is .0.{0,3} (1x1, grouped 3x3) then .1 (1x1)."""
    stem = _w(64, width)
    layers: list[nn.Module] = [*_cbr(3, stem, 7, 2, 3), nn.MaxPool2d(3, 2, 1)]
    cin = stem
    for i, n in enumerate((3, 4, 23, 3)):
        mid, cout = _w(128 * 2 ** i, width), _w(256 * 2 ** i, width)
        blocks = []
        for b in range(n):
            stride = 2 if b == 0 and i > 0 else 1
            main = nn.Sequential(nn.Sequential(*_cbr(cin, mid, 1), *_cbr(mid, mid, 3, stride, 1, groups=32)),
                                 *_cbr(mid, cout, 1)[:2])
            short = nn.Sequential(*_cbr(cin, cout, 1, stride)[:2]) if b == 0 else nn.Identity()
            blocks.append(nn.Sequential(Branches(main, short), SumBranches(), nn.ReLU()))
            cin = cout
        layers.append(nn.Sequential(*blocks))
    net = nn.Sequential()
    net.features = nn.Sequential(*layers)
    net.avg_pool = nn.AdaptiveAvgPool2d(1)
    net.flatten = nn.Flatten()
    net.last_linear = nn.Linear(cin, num_classes)
    return net
