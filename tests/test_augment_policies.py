"""Policy draws: frequencies, independence across samples, reproducibility, and the public API."""

from __future__ import annotations

import math

import pytest
import torch

from pipelines import DataConfig
from pipelines.augment import (
    AUTOAUGMENT_POLICIES,
    POLICIES,
    BatchAugment,
    BatchAutoAugment,
    BatchRandAugment,
    build_batch_augment,
)
from pipelines.augment.policies import OP_ID, TIMM_RANDAUGMENT_OPS, TORCHVISION_RANDAUGMENT_OPS

N = 4000


def within(count: float, n: int, p: float, sigmas: float = 5.0) -> bool:
    """`count` successes of `n` is within `sigmas` binomial standard deviations of n * p."""
    return abs(count - n * p) <= sigmas * math.sqrt(max(n * p * (1 - p), 1e-9)) + 1e-9


def image_batch(n: int = 64, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("policy", sorted(AUTOAUGMENT_POLICIES))
def test_autoaugment_subpolicy_and_op_frequencies(policy):
    aug = BatchAutoAugment(policy)
    table = AUTOAUGMENT_POLICIES[policy]
    p = aug.draw(N, 32, 32, torch.Generator().manual_seed(0))
    counts = torch.bincount(p["subpolicy"], minlength=len(table))
    assert all(within(int(c), N, 1 / len(table)) for c in counts)
    for s, sub in enumerate(table):
        rows = p["subpolicy"] == s
        n = int(rows.sum())
        for j, (name, prob, _) in enumerate(sub):
            fired = p["op"][rows, j] == OP_ID[name]
            if name != "Identity":
                # only this op or Identity ever appears at this stage of this sub-policy
                assert bool((fired | (p["op"][rows, j] == OP_ID["Identity"])).all())
                assert within(int(fired.sum()), n, prob), (s, j, name)


def test_autoaugment_signs_are_fair_and_magnitudes_come_from_the_table():
    aug = BatchAutoAugment("cifar10")
    p = aug.draw(N, 32, 32, torch.Generator().manual_seed(1))
    rotate = p["op"] == OP_ID["Rotate"]  # cifar10 sub-policy 1: ("Rotate", 0.7, 2) -> 30 * 2 / 9 degrees
    assert torch.allclose(p["arg"][rotate].abs(), torch.tensor(30.0 * 2 / 9))
    assert within(int((p["arg"][rotate] < 0).sum()), int(rotate.sum()), 0.5)
    translate = p["op"] == OP_ID["TranslateX"]  # bins 9 and 8 of 150/331 * width, truncated to pixels
    assert set(p["arg"][translate].abs().tolist()) <= {14.0, 12.0}


@pytest.mark.parametrize(
    "style, names, prob",
    [("torchvision", TORCHVISION_RANDAUGMENT_OPS, 1.0), ("timm", TIMM_RANDAUGMENT_OPS, 0.5)],
)
def test_randaugment_op_frequencies(style, names, prob):
    aug = BatchRandAugment(2, 5, style=style)
    p = aug.draw(N, 32, 32, torch.Generator().manual_seed(2))
    ops = p["op"].flatten()
    identity = OP_ID["Identity"]
    for name in names:
        if name != "Identity":
            assert within(int((ops == OP_ID[name]).sum()), ops.numel(), prob / len(names)), name
    expected_identity = (1 - prob) + prob * ("Identity" in names) / len(names)
    assert within(int((ops == identity).sum()), ops.numel(), expected_identity)


def test_randaugment_magnitude_std_draws_per_sample_levels():
    aug = BatchRandAugment(2, 15, magnitude_std=2.0)
    p = aug.draw(N, 32, 32, torch.Generator().manual_seed(3))
    rotate = p["op"] == OP_ID["Rotate"]
    levels = p["arg"][rotate].abs() / (30.0 / 30)  # Rotate's grid: 30 degrees over 30 bin steps
    assert abs(levels.mean() - 15) < 0.3 and abs(levels.std() - 2.0) < 0.3
    fixed = BatchRandAugment(2, 15).draw(N, 32, 32, torch.Generator().manual_seed(3))
    assert torch.allclose(fixed["arg"][fixed["op"] == OP_ID["Rotate"]].abs(), torch.tensor(15.0))


def test_timm_style_levels_clip_at_ten():
    aug = BatchRandAugment(2, 10, magnitude_std=0.5, style="timm")
    p = aug.draw(N, 32, 32, torch.Generator().manual_seed(4))
    rotate = p["arg"][p["op"] == OP_ID["Rotate"]].abs()
    assert rotate.max() <= 30.0 + 1e-4 and rotate.min() < 29.0  # level <= 10, noise below it
    posterize = p["arg"][p["op"] == OP_ID["Posterize"]]
    assert set(posterize.tolist()) <= {3.0, 4.0}


@pytest.mark.parametrize("policy", POLICIES)
def test_samples_are_independent_and_seeded_runs_reproduce(policy):
    aug = build_batch_augment(auto_augment=policy, cutout=4)
    x = image_batch(1).expand(64, -1, -1, -1).contiguous()  # the same image 64 times
    a = aug(x, generator=torch.Generator().manual_seed(0))
    b = aug(x, generator=torch.Generator().manual_seed(0))
    c = aug(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    distinct = {bytes(img.flatten().tolist()) for img in a}
    assert len(distinct) > 32  # different samples got different ops, magnitudes and boxes


@pytest.mark.parametrize("policy", [*POLICIES, None])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_output_keeps_dtype_shape_and_memory_format(policy, layout):
    aug = build_batch_augment(auto_augment=policy or "", cutout=8)
    x = image_batch(8, 24).contiguous(memory_format=layout)
    out = aug(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape and out.device == x.device
    assert out.is_contiguous(memory_format=layout)


def test_build_batch_augment_api():
    assert build_batch_augment() is None and build_batch_augment(DataConfig()) is None
    assert isinstance(build_batch_augment(cutout=16), BatchAugment)
    with pytest.raises(
        ValueError, match="data.auto_augment: unknown value 'autoaug'; valid: .*'randaugment'"
    ):
        build_batch_augment(auto_augment="autoaug")
    ra = build_batch_augment(
        DataConfig(auto_augment="randaugment", randaugment_n=3, randaugment_m=10.0, magnitude_std=0.5)
    )
    assert ra.stages[0].num_ops == 3 and ra.stages[0].magnitude_std == 0.5
    timm = build_batch_augment(
        auto_augment="randaugment", randaugment_m=10, augment_fill=(124, 116, 104), randaugment_style="timm"
    )
    assert timm.stages[0].style == "timm" and timm.stages[0].fill.tolist() == [124.0, 116.0, 104.0]
    with pytest.raises(ValueError, match="outside"):
        build_batch_augment(auto_augment="randaugment", randaugment_m=31)
    with pytest.raises(ValueError, match="uint8"):
        build_batch_augment(auto_augment="cifar10")(torch.zeros(2, 3, 8, 8))
