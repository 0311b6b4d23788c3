"""The batched augmentations compile as one graph (no host syncs, no graph breaks)."""

from __future__ import annotations

import pytest
import torch

from pipelines.augment import OPS, apply_ops, build_batch_augment
from pipelines.augment.policies import OP_ID

pytestmark = pytest.mark.slow  # inductor compiles take tens of seconds on a small CPU


def test_compiled_ops_match_eager():
    g = torch.Generator().manual_seed(0)
    n = 2 * len(OPS)
    x = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    op = torch.arange(n) % len(OPS)
    arg = torch.where(op == OP_ID["Posterize"], 4.0, torch.where(op == OP_ID["Solarize"], 128.0, 0.4))
    fill = torch.tensor([128.0, 128.0, 128.0])
    eager = apply_ops(x, op, arg, OPS, fill)
    compiled = torch.compile(apply_ops, fullgraph=True)(x, op, arg, OPS, fill)
    diff = (eager.int() - compiled.int()).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.99


def test_whole_augmentation_compiles_fullgraph():
    aug = build_batch_augment(auto_augment="cifar10", cutout=8)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    out = torch.compile(aug, fullgraph=True)(x)  # global RNG inside a compiled step (no generator argument)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
