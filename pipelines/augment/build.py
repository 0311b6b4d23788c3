"""`build_batch_augment`: the policy named in the config (+ Cutout) as one module for the loaders."""

from __future__ import annotations

import torch
from torch import nn

from .autoaugment import BatchAutoAugment
from .cutout import Cutout
from .jitter import ColorJitter
from .policies import AUTOAUGMENT_POLICIES, POLICIES
from .randaugment import BatchRandAugment


def check_images(x: torch.Tensor) -> None:
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(
            f"batch augmentations take uint8 N x 3 x H x W images, got {x.dtype} of shape {tuple(x.shape)}"
        )


def memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class BatchAugment(nn.Module):
    """Stages run in order on a uint8 batch; the output keeps the input's dtype, shape, device and layout."""

    def __init__(self, *stages: nn.Module) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_images(x)
        layout = memory_format(x)
        for stage in self.stages:
            x = stage(x, generator=generator)
        return x.contiguous(memory_format=layout)


def build_batch_augment(
    policy: str | None,
    cutout: int = 0,
    *,
    randaugment_n: int = 2,
    randaugment_m: float = 9.0,
    magnitude_std: float = 0.0,
    fill=(128, 128, 128),
    randaugment_style: str = "torchvision",
    jitter: tuple[float, ...] = (),
) -> BatchAugment | None:
    """[ColorJitter,] AutoAugment ("imagenet", "cifar10", "cifar10_dbm") or RandAugment ("randaugment"),
    then Cutout; None if none of them.

    `randaugment_m` is a bin of torchvision's 31 (style "torchvision"), or timm's 0..10 level
    (style "timm": the papers' "rand-n2-m10-mstd0.5" is n=2, m=10, magnitude_std=0.5).
    `jitter` = (brightness, contrast, saturation, hue): a per-sample ColorJitter applied to every image
    (p = 1) before the policy, as the released large-scale BCL code's view 0 (`RandomApply([ColorJitter(0.4,
    0.4, 0.4, 0)], p=1.0)` before RandAugment); empty: off.
    """
    stages: list[nn.Module] = []
    if jitter:
        if len(jitter) != 4:
            raise ValueError(f"jitter takes (brightness, contrast, saturation, hue), got {tuple(jitter)}")
        stages.append(ColorJitter(*(float(v) for v in jitter), p=1.0))
    if policy:
        if policy not in POLICIES:
            raise ValueError(f"unknown augmentation policy {policy!r}; choose from {list(POLICIES)} or None")
        if policy in AUTOAUGMENT_POLICIES:
            stages.append(BatchAutoAugment(policy, fill=fill))
        else:
            stages.append(
                BatchRandAugment(
                    randaugment_n,
                    randaugment_m,
                    magnitude_std=magnitude_std,
                    style=randaugment_style,
                    fill=fill,
                )
            )
    if cutout:
        stages.append(Cutout(cutout))
    return BatchAugment(*stages) if stages else None
