"""The CIFAR ResNet family of both papers: 3x3 stem, three stages of BasicBlocks,
"option A" shortcuts, global average pool. ResNet-32 is 5 blocks per stage and 64-d features.

The body ends at the pooled features; the classifier lives in `trainer.models`. Initialisation follows the
released code: kaiming-normal (fan_in, ReLU gain) on every Conv2d and Linear weight, which `models` also
applies to this family's linear heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def kaiming_init_(module: nn.Module) -> None:
    """The released code's `_weights_init`: kaiming-normal on Conv2d and Linear weights, biases untouched."""
    if isinstance(module, nn.Conv2d | nn.Linear):
        nn.init.kaiming_normal_(module.weight)


class ShortcutA(nn.Module):
    """Option A: stride-2 subsample and zero-pad the channels (no parameters)."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            if stride != 2 or planes - in_planes != 2 * (planes // 4):
                raise ValueError(f"option-A shortcut needs stride 2 and {in_planes}->{planes} = +planes/2")
            self.shortcut: nn.Module = ShortcutA(planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """`blocks` BasicBlocks per stage, `widths` channels; forward returns pooled features [N, widths[-1]]."""

    def __init__(self, blocks: int, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.feature_dim = widths[-1]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_planes = [], widths[0]
        for i, planes in enumerate(widths):
            layers = []
            for j in range(blocks):
                layers.append(BasicBlock(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.apply(kaiming_init_)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        # Global average pool; the released code's avg_pool2d(out, size) equals a mean for square maps.
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
