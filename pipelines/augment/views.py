"""The contrastive views' photometric recipe (BCL / SimCLR "sim-sim"), built from pipelines.augment's ops.

Per sample, as the papers' torchvision pipelines: ColorJitter(0.4, 0.4, 0.4, 0.1) with probability 0.8,
RandomGrayscale(0.2), and, in the CIFAR recipe, GaussianBlur(sigma ~ U[0.1, 2]) with probability 0.5.
The crop and flip of these views happen in the loaders (RandomResizedCrop, scale `data.view_crop_scale`, and a
flip), before this recipe.
"""

from __future__ import annotations

from .build import BatchAugment
from .jitter import ColorJitter, GaussianBlur, RandomGrayscale


def contrastive_view_augment(*, blur: bool) -> BatchAugment:
    """uint8 N x 3 x H x W in and out (layout kept), called as `aug(images, generator=g)`."""
    stages = [ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), RandomGrayscale(0.2)]
    if blur:
        stages.append(GaussianBlur((0.1, 2.0), p=0.5))
    return BatchAugment(*stages)
