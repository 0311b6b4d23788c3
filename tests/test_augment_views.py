"""The contrastive views' recipe (pipelines/augment/views.py) as the loaders use it, on tiny tensors."""

from __future__ import annotations

import torch

from pipelines.augment.views import contrastive_view_augment


def images(n=64, size=16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return x.contiguous(memory_format=torch.channels_last)


def test_keeps_dtype_shape_and_layout_and_is_seeded():
    x = images()
    aug = contrastive_view_augment(blur=True)
    y = aug(x, generator=torch.Generator().manual_seed(1))
    assert y.dtype == torch.uint8 and y.shape == x.shape
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, aug(x, generator=torch.Generator().manual_seed(1)))
    assert contrastive_view_augment(blur=False)(x.contiguous()).is_contiguous()


def test_recipe_probabilities():
    x = images(n=2000, size=8)
    y = contrastive_view_augment(blur=False)(x, generator=torch.Generator().manual_seed(0)).int()
    gray = ((y[:, 0] == y[:, 1]) & (y[:, 1] == y[:, 2])).flatten(1).all(1).float().mean()
    changed = (y != x.int()).flatten(1).any(1).float().mean()
    assert abs(gray - 0.2) < 0.04  # RandomGrayscale(0.2)
    assert abs(changed - (1 - 0.2 * 0.8)) < 0.04  # untouched only when neither jitter (0.8) nor gray (0.2)
