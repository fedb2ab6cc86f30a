"""Tiny networks for the core's tests."""
import torch
from torch import nn


class Plain(nn.Module):
    """Three convs in a chain; names like a user's own net."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.conv3 = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x):
        return self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))


class Residual(nn.Module):
    """conv_a and conv_b outputs are added: their filters are coupled."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.head = nn.Conv2d(1, c, 3, padding=1)
        self.conv_a = nn.Conv2d(c, c, 3, padding=1)
        self.conv_b = nn.Conv2d(c, c, 3, padding=1)
        self.tail = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.head(x))
        return self.tail(torch.relu(self.conv_a(h) + self.conv_b(h)))


def sgd(model, momentum=0.9):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)
