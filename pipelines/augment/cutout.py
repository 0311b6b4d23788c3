"""Cutout on a uint8 batch: one square per sample, zero-filled, as cifar10-airbench and composer do it."""

from __future__ import annotations

import torch
from torch import nn


def cutout_centres(n: int, height: int, width: int, generator=None, device=None) -> torch.Tensor:
    """One box centre (row, col) per sample, uniform over the whole image (N x 2, int64)."""
    rows = torch.randint(height, (n,), device=device, generator=generator)
    cols = torch.randint(width, (n,), device=device, generator=generator)
    return torch.stack([rows, cols], dim=1)


def cutout_at(x: torch.Tensor, centres: torch.Tensor, size: int, fill: int = 0) -> torch.Tensor:
    """Fill a `size` x `size` square around each sample's centre, clipped at the borders (holes near an
    edge are smaller). Rows `[cy - size // 2, cy - size // 2 + size)` are cut: DeVries & Taylor's box for
    even sizes, and exactly `size` wide for odd ones."""
    n, _, h, w = x.shape
    top = centres[:, :1] - size // 2
    left = centres[:, 1:] - size // 2
    rows = torch.arange(h, device=x.device) - top  # N x H: offset into the square
    cols = torch.arange(w, device=x.device) - left
    inside = ((rows >= 0) & (rows < size)).view(n, 1, h, 1) & ((cols >= 0) & (cols < size)).view(n, 1, 1, w)
    return x.masked_fill(inside, fill)


def cutout(
    x: torch.Tensor, size: int, generator: torch.Generator | None = None, fill: int = 0
) -> torch.Tensor:
    """Cutout with centres uniform over the image (see `cutout_at`); fill 0 on uint8 matches the papers'
    Cutout on [0, 1] tensors before normalisation."""
    n, _, h, w = x.shape
    return cutout_at(x, cutout_centres(n, h, w, generator, x.device), size, fill)


class Cutout(nn.Module):
    def __init__(self, size: int, fill: int = 0) -> None:
        super().__init__()
        if size < 0:
            raise ValueError(f"cutout size must be >= 0, got {size}")
        self.size, self.fill = int(size), int(fill)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return cutout(x, self.size, generator, self.fill) if self.size > 0 else x

    def extra_repr(self) -> str:
        return f"size={self.size}, fill={self.fill}"
