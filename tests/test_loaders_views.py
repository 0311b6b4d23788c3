"""The contrastive views' batched colour recipe (pipelines/augment_views.py) on tiny tensors."""

from __future__ import annotations

import pytest
import torch

from pipelines.augment_views import ContrastiveViewAugment, gaussian_blur


def images(n=8, size=16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return x.contiguous(memory_format=torch.channels_last)


def test_keeps_dtype_shape_and_layout():
    x = images()
    y = ContrastiveViewAugment(blur=True)(x, generator=torch.Generator().manual_seed(1))
    assert y.dtype == torch.uint8 and y.shape == x.shape
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert ContrastiveViewAugment()(x.contiguous()).is_contiguous()


def test_nothing_applied_is_the_identity():
    x = images()
    assert torch.equal(ContrastiveViewAugment(p_jitter=0.0, p_gray=0.0)(x), x)


def test_grayscale_always():
    y = ContrastiveViewAugment(p_jitter=0.0, p_gray=1.0)(images()).int()
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])


def test_jitter_changes_every_sample_when_certain_and_is_seeded():
    x = images()
    aug = ContrastiveViewAugment(p_jitter=1.0, p_gray=0.0)
    a = aug(x, generator=torch.Generator().manual_seed(3))
    b = ContrastiveViewAugment(p_jitter=1.0, p_gray=0.0)(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert ((a.int() - x.int()).abs().flatten(1).amax(1) > 0).all()


def test_brightness_only_matches_a_scale():
    x = torch.full((2, 3, 4, 4), 100, dtype=torch.uint8)
    aug = ContrastiveViewAugment(brightness=0.4, contrast=0, saturation=0, hue=0, p_jitter=1.0, p_gray=0.0)
    y = aug(x, generator=torch.Generator().manual_seed(0)).float()
    factor = y[:, 0, 0, 0] / 100  # one factor per sample in [0.6, 1.4], applied to the whole image
    assert ((factor >= 0.59) & (factor <= 1.41)).all() and (y == y[:, :1, :1, :1]).all()


def test_blur_smooths_with_per_sample_sigma():
    x = images(n=4, size=24).float()
    sharp = gaussian_blur(x, torch.full((4,), 0.1))
    wide = gaussian_blur(x, torch.tensor([0.1, 2.0, 0.1, 2.0]))
    assert torch.allclose(sharp, x, atol=1e-3)  # sigma 0.1: a near-delta kernel
    assert wide[1].std() < 0.5 * x[1].std() and torch.allclose(wide[0], x[0], atol=1e-3)


def test_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        ContrastiveViewAugment()(torch.zeros(2, 3, 4, 4))
