"""`build_batch_augment`: the augmentation a `DataConfig` names for view 0 (or for the extra views of the
"classification" view recipe), one batched module for the loaders."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..config import DataConfig
from .autoaugment import BatchAutoAugment
from .cutout import Cutout
from .jitter import ColorJitter, GaussianBlur, RandomGrayscale
from .policies import AUTOAUGMENT_POLICIES
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
    cfg: DataConfig | None = None, *, extra_view: bool = False, **overrides
) -> BatchAugment | None:
    """The view-0 augmentation `cfg` names: [ColorJitter (`jitter`),] AutoAugment or RandAugment
    (`auto_augment`, with `randaugment_n`, `randaugment_m`, `magnitude_std`, `randaugment_style`,
    `augment_fill`), then Cutout (`cutout`); None if none of them. `overrides` replace keys of `cfg`
    (default `DataConfig()`), checked as a recipe's are.

    `jitter` = (brightness, contrast, saturation, hue) is a per-sample ColorJitter applied to every image
    (p = 1) before the policy, as the released large-scale BCL code's view 0 (`RandomApply([ColorJitter(0.4,
    0.4, 0.4, 0)], p=1.0)` before RandAugment).

    `extra_view`: the augmentation of views 1.. under the "classification" view recipe, the same stages with
    RandomGrayscale (`view_grayscale`) and GaussianBlur (`view_blur`) between the jitter and the policy, the
    order of GML's released "randclsstack" view (crop, flip, jitter, grayscale, blur, RandAugment).
    """
    cfg = dataclasses.replace(cfg or DataConfig(), **overrides)
    stages: list[nn.Module] = []
    if cfg.jitter:
        stages.append(ColorJitter(*(float(v) for v in cfg.jitter), p=1.0))
    if extra_view and cfg.view_grayscale:
        stages.append(RandomGrayscale(cfg.view_grayscale))
    if extra_view and cfg.view_blur:
        stages.append(GaussianBlur((0.1, 2.0), p=cfg.view_blur))
    fill = tuple(cfg.augment_fill)
    if cfg.auto_augment in AUTOAUGMENT_POLICIES:
        stages.append(BatchAutoAugment(cfg.auto_augment, fill=fill))
    elif cfg.auto_augment:
        stages.append(
            BatchRandAugment(
                cfg.randaugment_n,
                cfg.randaugment_m,
                magnitude_std=cfg.magnitude_std,
                style=cfg.randaugment_style,
                fill=fill,
            )
        )
    if cfg.cutout:
        stages.append(Cutout(cfg.cutout))
    return BatchAugment(*stages) if stages else None
