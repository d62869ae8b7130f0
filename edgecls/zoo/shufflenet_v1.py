"""ShuffleNet v1 (Zhang et al., 2017), the paper's architecture: groups=3, width 1.0.

Neither torchvision nor timm ships it, so it is written here (and nothing else is).
Stage widths for g=3 are 240/480/960 with 4/8/4 units (paper, Table 1); the first 1x1
convolution of stage 2 is not grouped because its input has only 24 channels (paper, 3.3).
"""
from __future__ import annotations

import torch
from torch import nn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int, group_first: bool):
        super().__init__()
        self.stride = stride
        self.groups = groups
        # a stride-2 unit concatenates the pooled input, so its branch makes the rest
        branch_out = out_ch - in_ch if stride == 2 else out_ch
        mid = out_ch // 4
        first_groups = groups if group_first else 1
        self.compress = nn.Sequential(
            nn.Conv2d(in_ch, mid, 1, groups=first_groups, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.depthwise = nn.Sequential(
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False),
            nn.BatchNorm2d(mid))
        self.expand = nn.Sequential(
            nn.Conv2d(mid, branch_out, 1, groups=groups, bias=False),
            nn.BatchNorm2d(branch_out))
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.shuffle_groups = first_groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.compress(x)
        y = channel_shuffle(y, self.shuffle_groups) if self.shuffle_groups > 1 else y
        y = self.expand(self.depthwise(y))
        if self.stride == 2:
            return torch.relu(torch.cat([self.shortcut(x), y], dim=1))
        return torch.relu(x + y)


class ShuffleNetV1(nn.Module):
    STAGES = {3: (240, 480, 960)}
    REPEATS = (4, 8, 4)

    def __init__(self, num_classes: int = 1000, groups: int = 3):
        super().__init__()
        widths = self.STAGES[groups]
        self.stem = nn.Sequential(
            nn.Conv2d(3, 24, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(24), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1))
        layers, in_ch = [], 24
        for stage, (width, repeats) in enumerate(zip(widths, self.REPEATS)):
            for i in range(repeats):
                layers.append(ShuffleUnit(in_ch, width, stride=2 if i == 0 else 1,
                                          groups=groups, group_first=not (stage == 0 and i == 0)))
                in_ch = width
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def shufflenet_v1(num_classes: int = 1000) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes=num_classes, groups=3)
