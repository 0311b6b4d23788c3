"""The contrastive views' colour recipe (BCL / SimCLR "sim-sim"), batched on uint8 N x 3 x H x W images.

Per sample, as in the papers' torchvision pipelines: ColorJitter(brightness 0.4, contrast 0.4, saturation 0.4,
hue 0.1) with probability 0.8, RandomGrayscale 0.2, and (CIFAR recipe) GaussianBlur with sigma ~ U[0.1, 2]
with probability 0.5. Factors are drawn per sample; the four jitter ops run in one random order per batch
(torchvision draws the order per image). Arithmetic follows torchvision's float kernels on [0, 1]; the
result is rounded back to uint8. The crop and flip of these views happen in the loaders.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _rand(n: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, device=x.device, generator=generator, dtype=torch.float32)


def _uniform(n, lo, hi, x, generator) -> torch.Tensor:
    return lo + (hi - lo) * _rand(n, x, generator)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, N x 1 x H x W (torchvision's rgb_to_grayscale weights)."""
    r, g, b = x.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * a + (1 - factor) * b).clamp_(0, 1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(dim=1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    mask = i.unsqueeze(1) == torch.arange(6, device=i.device).view(-1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), dim=1)
    a2 = torch.stack((t, v, v, q, p, p), dim=1)
    a3 = torch.stack((p, p, t, v, v, q), dim=1)
    a4 = torch.stack((a1, a2, a3), dim=1)
    return torch.einsum("...ijk, ...xijk -> ...xjk", mask.to(x.dtype), a4)


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0:1] + shift, 1.0)
    return _hsv_to_rgb(torch.cat([h, hsv[:, 1:]], dim=1))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float = 2.0) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample (float N x C x H x W, reflect padding)."""
    n, c, h, w = x.shape
    radius = max(1, math.ceil(3 * max_sigma))
    radius = min(radius, h - 1, w - 1) if min(h, w) > 1 else 0
    if radius == 0:
        return x
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1)) ** 2)
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C) x K
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


class ContrastiveViewAugment(nn.Module):
    def __init__(
        self,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        p_jitter: float = 0.8,
        p_gray: float = 0.2,
        blur: bool = False,
        p_blur: float = 0.5,
        sigma: tuple[float, float] = (0.1, 2.0),
        seed: int = 0,
    ):
        super().__init__()
        # The op order is drawn on the host from its own generator: reading a device draw back would sync.
        self._order_rng = torch.Generator().manual_seed(seed)
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.p_jitter, self.p_gray, self.blur, self.p_blur, self.sigma = p_jitter, p_gray, blur, p_blur, sigma

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 N x 3 x H x W images, got {x.dtype} {tuple(x.shape)}")
        n = x.shape[0]
        if n == 0:
            return x
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        col = lambda v: v.view(-1, 1, 1, 1)  # noqa: E731
        f = x.float().div_(255.0)
        jitter = col(_rand(n, x, generator) < self.p_jitter)
        b = col(_uniform(n, 1 - self.brightness, 1 + self.brightness, x, generator))
        c = col(_uniform(n, 1 - self.contrast, 1 + self.contrast, x, generator))
        s = col(_uniform(n, 1 - self.saturation, 1 + self.saturation, x, generator))
        h = col(_uniform(n, -self.hue, self.hue, x, generator))
        order = torch.randperm(4, generator=self._order_rng).tolist()
        j = f
        for op in order:
            if op == 0:
                j = _blend(j, torch.zeros_like(j), b)
            elif op == 1:
                j = _blend(j, _gray(j).mean(dim=(1, 2, 3), keepdim=True), c)
            elif op == 2:
                j = _blend(j, _gray(j), s)
            else:
                j = _adjust_hue(j, h)
        f = torch.where(jitter, j, f)
        gray = col(_rand(n, x, generator) < self.p_gray)
        f = torch.where(gray, _gray(f).expand_as(f), f)
        if self.blur:
            apply = col(_rand(n, x, generator) < self.p_blur)
            sigma = _uniform(n, self.sigma[0], self.sigma[1], x, generator)
            f = torch.where(apply, gaussian_blur(f, sigma, self.sigma[1]), f)
        out = f.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
        return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
