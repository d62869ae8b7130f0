"""A small grayscale CNN for the model-source tests, importable by name (`graynet:build`)
as a user's own factory module would be. BatchNorm, a residual add and a squeeze-excite-like
multiply: the ops real mobile nets give the quantizers."""
from __future__ import annotations

import torch
from torch import nn

INPUT_SIZE = (40, 32)          # H, W: not square, not 224


class GrayNet(nn.Module):
    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width),
                                   nn.ReLU())
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(width, width, 1),
                                  nn.Hardsigmoid())
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                                  nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2))
        h, w = INPUT_SIZE
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * (h // 4) * (w // 4), classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.block(x)
        x = x + y * self.gate(y)
        return self.head(self.down(x))


def build(width: int = 16, classes: int = 10) -> GrayNet:
    """The factory `edgecls export graynet:build --kwargs '{"width": 16}'` calls."""
    return GrayNet(width, classes)


class ChannelsLast(nn.Module):
    """The same network taking NHWC input, as some ONNX files from other tools do."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.permute(0, 3, 1, 2))
