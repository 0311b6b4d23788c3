"""Batched, device-side augmentations on uint8 N x 3 x H x W images: one pass over the batch, per-sample
randomness from an optional `torch.Generator`, no host syncs (they can run inside a compiled step).

    aug = build_batch_augment("cifar10", cutout=16)     # None when there is nothing to do
    images = aug(images, generator=g)                   # uint8 in, uint8 out, same layout
    x = Normalize(mean, std)(images)                    # the model's first op: float32

Compiled, they take no `generator` (`ops.generator_as_default` lends its state). Policy "cifar10_dbm" is the
released DBM CIFAR AutoAugment with PIL's arithmetic (torchvision's "cifar10" stays).
"""

from .autoaugment import BatchAutoAugment
from .build import BatchAugment, build_batch_augment
from .cutout import Cutout, cutout
from .jitter import ColorJitter, GaussianBlur, RandomGrayscale
from .normalize import Normalize
from .ops import apply_ops
from .policies import AUTOAUGMENT_POLICIES, OPS, POLICIES, RANDAUGMENT_STYLES
from .randaugment import BatchRandAugment

__all__ = [
    "AUTOAUGMENT_POLICIES",
    "OPS",
    "POLICIES",
    "RANDAUGMENT_STYLES",
    "BatchAugment",
    "BatchAutoAugment",
    "BatchRandAugment",
    "ColorJitter",
    "Cutout",
    "GaussianBlur",
    "Normalize",
    "RandomGrayscale",
    "apply_ops",
    "build_batch_augment",
    "cutout",
]
