"""The contrastive views' photometric ops against torchvision's per-image ops."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from pipelines.augment.jitter import ColorJitter, GaussianBlur, RandomGrayscale, color_jitter, gaussian_blur

ADJUST = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def batch(n: int = 6, size: int = 16) -> torch.Tensor:
    x = torch.randint(
        0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    x[0] = 90  # grey: hue undefined
    return x


def test_color_jitter_matches_torchvision_in_each_samples_order():
    x = batch()
    g = torch.Generator().manual_seed(1)
    factors = torch.stack(
        [0.6 + 0.8 * torch.rand(6, generator=g) for _ in range(3)] + [torch.rand(6, generator=g) - 0.5], 1
    )
    order = torch.rand(6, 4, generator=g).argsort(dim=1)
    apply = torch.tensor([True, True, True, True, True, False])
    out = color_jitter(x, factors, order, apply)
    for i in range(6):
        ref = x[i]
        for k in order[i].tolist() if apply[i] else []:
            ref = ADJUST[k](ref, float(factors[i, k]))
        diff = (out[i].int() - ref.int()).abs()
        assert diff.max() <= 1 and (diff == 0).float().mean() > 0.95, i  # float32 factor rounding only


def test_grayscale_and_blur_match_torchvision():
    x = batch()
    assert torch.equal(RandomGrayscale(1.0)(x), torch.stack([TF.rgb_to_grayscale(i, 3) for i in x]))
    assert torch.equal(RandomGrayscale(0.0)(x), x)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.8])
    out = gaussian_blur(x, sigma, 7)
    for i in range(6):
        ref = TF.gaussian_blur(x[i], [7, 7], [float(sigma[i])] * 2)
        assert (out[i].int() - ref.int()).abs().max() <= 1


@pytest.mark.parametrize(
    "module", [ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), RandomGrayscale(0.2), GaussianBlur()]
)
def test_modules_keep_shape_and_reproduce(module):
    x = batch(32, 12)
    a = module(x, generator=torch.Generator().manual_seed(0))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, module(x, generator=torch.Generator().manual_seed(0)))
    changed = (a != x).flatten(1).any(dim=1).float().mean()
    assert 0.05 < changed < 1.0  # applied to some samples, not all (p < 1)
