"""The view-0 ColorJitter stage of `build_batch_augment(jitter=...)`: torchvision's `ColorJitter` per sample
for the same drawn factors and order, applied to every image (p = 1) before the policy."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2 as T

from pipelines.augment import BatchRandAugment, ColorJitter, build_batch_augment
from pipelines.augment.jitter import color_jitter

RELEASED = (
    0.4,
    0.4,
    0.4,
    0.0,
)  # dbm_ltr large_scale/main.py: RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.0)], p=1.0)


def images(n: int = 64, size: int = 20) -> torch.Tensor:
    x = torch.randint(
        0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    x[0] = 77  # a flat grey image
    x[1, :, :, : size // 2] = 255  # saturated half
    return x


def test_equals_torchvision_color_jitter_per_sample_for_the_drawn_factors():
    x = images()
    jitter = ColorJitter(*RELEASED, p=1.0)
    params = jitter.draw(x.shape[0], x.device, torch.Generator().manual_seed(3))
    factors, order = params["factors"], params["order"]
    assert params["apply"].all()  # p = 1: every image
    assert ((factors[:, :3] >= 0.6) & (factors[:, :3] <= 1.4)).all() and (factors[:, 3] == 0).all()
    out = color_jitter(x, factors, order, params["apply"], jitter.active)
    reference = T.ColorJitter(*RELEASED)
    for i in range(x.shape[0]):
        b, c, s, _ = (float(v) for v in factors[i])
        tv_params = dict(
            fn_idx=order[i], brightness_factor=b, contrast_factor=c, saturation_factor=s, hue_factor=None
        )
        assert torch.equal(out[i], reference.transform(x[i], tv_params)), i
    # the forward draws the same parameters from the same generator
    assert torch.equal(jitter(x, generator=torch.Generator().manual_seed(3)), out)


def test_build_puts_the_jitter_before_the_policy():
    x = images()
    aug = build_batch_augment(
        auto_augment="randaugment",
        jitter=RELEASED,
        randaugment_style="timm",
        randaugment_m=10.0,
        magnitude_std=0.5,
    )
    first, second = aug.stages
    assert isinstance(first, ColorJitter) and first.p == 1.0 and isinstance(second, BatchRandAugment)
    assert first.ranges == [(0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.0, 0.0)] and first.active[3] is False
    g, h = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(aug(x, generator=g), second(first(x, generator=h), generator=h))
    only = build_batch_augment(jitter=RELEASED)
    changed = (only(x, generator=torch.Generator().manual_seed(1)) != x).flatten(1).any(dim=1)
    assert changed[1:].all()  # every (non-flat) image is jittered
    assert len(build_batch_augment(auto_augment="cifar10").stages) == 1  # off by default
    assert build_batch_augment() is None


def test_bad_jitter():
    with pytest.raises(ValueError, match="brightness, contrast, saturation, hue"):
        build_batch_augment(jitter=(0.4, 0.4, 0.4))
    with pytest.raises(ValueError, match=r"data.jitter: .*hue <= 0.5\), got \(0.4, 0.4, 0.4, 0.7\)"):
        build_batch_augment(jitter=(0.4, 0.4, 0.4, 0.7))
