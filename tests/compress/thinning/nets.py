"""Small networks covering every graph shape thinning must handle, alone and combined."""
import torch
import torch.nn.functional as F
from torch import nn


def cbr(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups), nn.BatchNorm2d(cout), nn.ReLU())


class Chain(nn.Module):
    """Conv-BN-ReLU, Conv-BN-PReLU(C), output conv."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.conv = nn.Conv2d(8, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.act = nn.PReLU(12)
        self.out = nn.Conv2d(12, 3, 3, padding=1)

    def forward(self, x):
        return self.out(self.act(self.bn(self.conv(self.a(x)))))


class Residual(nn.Module):
    """Two residual blocks: head, block convs and the adds share one channel group."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.b1 = nn.Sequential(cbr(c, c), nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))
        self.b2 = nn.Sequential(cbr(c, c), nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))
        self.tail = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        h = self.head(x)
        h = F.relu(h + self.b1(h))
        h = h + self.b2(h)
        return self.tail(h)


class Concat(nn.Module):
    """Two branches of different widths concatenated: index offsets."""

    def __init__(self):
        super().__init__()
        self.left = cbr(3, 6)
        self.right = cbr(3, 10)
        self.fuse = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x):
        return self.fuse(torch.cat([self.left(x), self.right(x)], dim=1))


class DepthwiseGrouped(nn.Module):
    """Pointwise, depthwise (multiplier 2), pointwise, grouped conv (2 groups)."""

    def __init__(self):
        super().__init__()
        self.pw1 = cbr(3, 8)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(16)
        self.pw2 = nn.Conv2d(16, 8, 1)
        self.grouped = nn.Conv2d(8, 12, 3, padding=1, groups=2)
        self.out = nn.Conv2d(12, 3, 1)

    def forward(self, x):
        h = F.relu(self.bn(self.dw(self.pw1(x))))
        return self.out(F.relu(self.grouped(F.relu(self.pw2(h)))))


class Shuffle(nn.Module):
    """PixelUnshuffle at the input, PixelShuffle (module) and F.pixel_shuffle inside."""

    def __init__(self):
        super().__init__()
        self.down = nn.PixelUnshuffle(2)
        self.body = cbr(12, 8)
        self.up = nn.Conv2d(8, 6 * 4, 3, padding=1)
        self.ps = nn.PixelShuffle(2)
        self.mid = nn.Conv2d(6, 8, 3, padding=1)
        self.unshuf = nn.PixelUnshuffle(2)
        self.mid2 = nn.Conv2d(32, 4 * 4, 1)
        self.out = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        h = self.ps(self.up(self.body(self.down(x))))
        h = self.mid2(self.unshuf(F.relu(self.mid(h))))
        return self.out(F.pixel_shuffle(F.relu(h), 2))


class Transposed(nn.Module):
    """Strided conv, ConvTranspose2d up, BN, output conv."""

    def __init__(self):
        super().__init__()
        self.down = cbr(3, 8, stride=2)
        self.up = nn.ConvTranspose2d(8, 10, 4, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.out = nn.Conv2d(10, 3, 3, padding=1)

    def forward(self, x):
        return self.out(F.relu(self.bn(self.up(self.down(x)))))


class Classifier(nn.Module):
    """Convs, flatten, Linear, Linear: a conv channel covers H*W linear inputs."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8, stride=2), cbr(8, 6, stride=2))
        self.fc1 = nn.Linear(6 * 4 * 4, 20)
        self.fc2 = nn.Linear(20, 5)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(torch.flatten(self.features(x), 1))))


class ShuffleConcat(nn.Module):
    """A decoder: the upsampler's PixelShuffle output is concatenated AFTER a skip branch."""

    def __init__(self):
        super().__init__()
        self.skip = cbr(3, 4)
        self.enc = cbr(3, 8, stride=2)
        self.up = nn.Conv2d(8, 6 * 4, 3, padding=1)
        self.ps = nn.PixelShuffle(2)
        self.fuse = nn.Conv2d(10, 3, 3, padding=1)

    def forward(self, x):
        return self.fuse(torch.cat([self.skip(x), self.ps(self.up(self.enc(x)))], 1))


class ResidualInConcat(nn.Module):
    """One concat branch is a residual block; the other a plain conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(cbr(8, 8), nn.Conv2d(8, 8, 3, padding=1))
        self.other = cbr(3, 5)
        self.fuse = nn.Conv2d(13, 3, 1)

    def forward(self, x):
        s = self.stem(x)
        return self.fuse(torch.cat([self.other(x), F.relu(s + self.block(s))], dim=1))


class StridedDepthwise(nn.Module):
    """A depthwise conv right after a strided conv, then a pointwise conv and upsampling."""

    def __init__(self):
        super().__init__()
        self.strided = cbr(3, 8, stride=2)
        self.dw = cbr(8, 8, groups=8)
        self.pw = nn.Conv2d(8, 12, 1)
        self.out = nn.Conv2d(12, 3, 3, padding=1)

    def forward(self, x):
        h = self.pw(self.dw(self.strided(x)))
        return self.out(F.interpolate(F.relu(h), scale_factor=2.0, mode="nearest"))


class Untraceable(nn.Module):
    """Python control flow on a tensor value inside a submodule: torch.fx cannot trace it."""

    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            if x.mean() > 0:
                return self.conv(x)
            return x

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = self.Gate()
        self.out = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        return self.out(self.gate(F.relu(self.head(x))))


class Shared(nn.Module):
    """One conv applied twice: its input and output channels are the same channels."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.head(x))
        return self.out(F.relu(self.shared(F.relu(self.shared(h)))))


class SqueezeExcite(nn.Module):
    """Channel attention: mean over H, W, two 1x1 convs, sigmoid, rescale the features."""

    def __init__(self):
        super().__init__()
        self.body = cbr(3, 8)
        self.squeeze = nn.Conv2d(8, 4, 1)
        self.excite = nn.Conv2d(4, 8, 1)
        self.out = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        h = self.body(x)
        s = torch.sigmoid(self.excite(F.relu(self.squeeze(h.mean((2, 3), keepdim=True)))))
        return self.out(h * s)


#: name -> (class, input shape, [(weight, kind) pruned by half])
ZOO = {
    "chain": (Chain, (2, 3, 8, 8), [("a.0.weight", "filters"), ("conv.weight", "filters")]),
    "residual": (Residual, (2, 3, 8, 8), [("head.weight", "filters"), ("b1.0.0.weight", "filters"),
                                          ("b2.0.0.weight", "filters")]),
    "concat": (Concat, (2, 3, 8, 8), [("left.0.weight", "filters"), ("right.0.weight", "filters")]),
    "depthwise_grouped": (DepthwiseGrouped, (2, 3, 8, 8), [("pw1.0.weight", "filters"), ("pw2.weight", "filters"),
                                                           ("grouped.weight", "filters")]),
    "shuffle": (Shuffle, (2, 3, 8, 8), [("body.0.weight", "filters"), ("up.weight", "filters"),
                                        ("mid.weight", "filters"), ("mid2.weight", "filters")]),
    "transposed": (Transposed, (2, 3, 8, 8), [("down.0.weight", "filters"), ("up.weight", "filters")]),
    "linear": (Classifier, (2, 3, 16, 16), [("features.0.0.weight", "filters"), ("features.1.0.weight", "filters"),
                                            ("fc1.weight", "filters")]),
    "shuffle_concat": (ShuffleConcat, (2, 3, 8, 8), [("up.weight", "filters"), ("skip.0.weight", "filters"),
                                                     ("enc.0.weight", "filters")]),
    "residual_in_concat": (ResidualInConcat, (2, 3, 8, 8), [("stem.weight", "filters"), ("block.0.0.weight", "filters"),
                                                            ("other.0.weight", "filters")]),
    "strided_depthwise": (StridedDepthwise, (2, 3, 8, 8), [("strided.0.weight", "filters"), ("pw.weight", "filters")]),
    "shared": (Shared, (2, 3, 8, 8), [("head.weight", "filters")]),
    "squeeze_excite": (SqueezeExcite, (2, 3, 8, 8), [("body.0.weight", "filters"), ("squeeze.weight", "filters")]),
    "channels": (Chain, (2, 3, 8, 8), [("conv.weight", "channels"), ("out.weight", "channels")]),
}
