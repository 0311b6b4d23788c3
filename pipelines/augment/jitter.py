"""The contrastive views' photometric ops (BCL / SimCLR style) on a uint8 batch, parameters per sample.

`ColorJitter` (brightness, contrast, saturation, hue in a random order per sample, the whole jitter applied
with probability p), `RandomGrayscale` and `GaussianBlur`, each following torchvision's
`transforms.v2` op on uint8 images (float32 arithmetic, the same truncation), one pass over the batch.
`ColorJitter(b, c, s, 0, p=1)` is also the large-scale recipes' view-0 jitter before RandAugment
(`build_batch_augment(..., jitter=(b, c, s, h))`); without hue it equals torchvision's `ColorJitter` to the
bit for the same drawn factors and order. `RandomGrayscale` and `GaussianBlur` also follow it on GML's extra
views (`data.view_grayscale`, `data.view_blur`). Each op's `draw` returns its per-sample parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .colour import blend, grayscale
from .ops import coin


def _uniform(n: int, lo: float, hi: float, device, generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, device=device, generator=generator)


def adjust_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of uint8 RGB images by `hue` (N, in turns, -0.5..0.5) through HSV, as torchvision."""
    img = x.float() * (1.0 / 255.0)  # torchvision scales by the reciprocal
    maxc, minc = img.amax(dim=1), img.amin(dim=1)
    delta = maxc - minc
    grey = delta == 0
    s = delta / torch.where(grey, 1.0, maxc)
    # hue sextant from whichever channel is the maximum (r wins ties, then g), as PIL and torchvision
    d = torch.where(grey, 1.0, delta).unsqueeze(1)
    rc, gc, bc = ((maxc.unsqueeze(1) - img) / d).unbind(1)
    r, g, _ = img.unbind(1)
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(grey, 0.0, h)
    h = (h * (1.0 / 6.0) + 1.0).fmod(1.0)
    h = (h + hue.view(-1, 1, 1)).remainder(1.0)
    # back to RGB
    h6 = h * 6.0
    i = h6.floor()
    f = h6 - i
    i = i.long().remainder(6)
    v = maxc
    p = ((1.0 - s) * v).clamp(0.0, 1.0)
    q = ((1.0 - s * f) * v).clamp(0.0, 1.0)
    t = ((s * f + (1.0 - s)) * v).clamp(0.0, 1.0)
    # per sextant i = 0..5, (r, g, b) = (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
    r = torch.where((i == 0) | (i == 5), v, torch.where(i == 1, q, torch.where(i == 4, t, p)))
    g = torch.where((i == 1) | (i == 2), v, torch.where(i == 0, t, torch.where(i == 3, q, p)))
    b = torch.where((i == 3) | (i == 4), v, torch.where(i == 2, t, torch.where(i == 5, q, p)))
    rgb = torch.stack([r, g, b], dim=1)
    return rgb.mul(255.0 + 1.0 - 1e-3).to(torch.uint8)  # torchvision's float -> uint8 conversion


def color_jitter(
    x: torch.Tensor,
    factors: torch.Tensor,
    order: torch.Tensor,
    apply: torch.Tensor,
    active: tuple[bool, bool, bool, bool] = (True, True, True, True),
) -> torch.Tensor:
    """Per sample i: if `apply[i]`, brightness, contrast, saturation (factors 0..) and hue (turns) from
    `factors[i]` (N x 4), in the order `order[i]` (N x 4, a permutation of 0..3). `active` marks the
    adjustments that are on for the batch (static), so unused ones cost nothing."""
    n = x.shape[0]
    for slot in range(4):
        k = order[:, slot].view(n, 1, 1, 1)
        factor = factors.gather(1, order[:, slot : slot + 1]).view(n, 1, 1, 1)
        on = apply.view(n, 1, 1, 1)
        if any(active[:3]):
            gray = grayscale(x).floor()
            # brightness, contrast and saturation are all blends with a degenerate image: black,
            # the mean grey level, the grey image
            mean = gray.mean(dim=(1, 2, 3), keepdim=True)
            degenerate = torch.where(k == 0, 0.0, torch.where(k == 1, mean, gray))
            blended = blend(x.float(), degenerate, factor - 1.0).to(torch.uint8)
            chosen = torch.zeros_like(on)
            for j in range(3):
                if active[j]:
                    chosen = chosen | (k == j)
            x = torch.where(chosen & on, blended, x)
        if active[3]:
            x = torch.where((k == 3) & on, adjust_hue(x, factor.view(n)), x)
    return x


class ColorJitter(nn.Module):
    """torchvision's `RandomApply([ColorJitter(b, c, s, h)], p)` per sample: factors uniform in
    [max(0, 1 - b), 1 + b] (hue in [-h, h]), applied in a random order drawn per sample."""

    def __init__(
        self,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        p: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0 <= hue <= 0.5:
            raise ValueError(f"ColorJitter hue must be in [0, 0.5], got {hue}")
        if min(brightness, contrast, saturation) < 0:
            raise ValueError("ColorJitter brightness, contrast and saturation must be >= 0")
        self.ranges = [(max(0.0, 1.0 - v), 1.0 + v) for v in (brightness, contrast, saturation)] + [
            (-hue, hue)
        ]
        self.active = (brightness > 0, contrast > 0, saturation > 0, hue > 0)
        self.p = float(p)

    def draw(self, n: int, device, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-sample parameters: `factors` (N x 4: brightness, contrast, saturation, hue), `order` (N x 4, a
        permutation of 0..3, torchvision's `fn_idx`) and `apply` (N, bool)."""
        factors = torch.stack([_uniform(n, lo, hi, device, generator) for lo, hi in self.ranges], dim=1)
        order = torch.rand(n, 4, device=device, generator=generator).argsort(dim=1)
        apply = (
            coin((n,), self.p, device, generator)
            if self.p < 1
            else torch.ones(n, dtype=torch.bool, device=device)
        )
        return {"factors": factors, "order": order, "apply": apply}

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        p = self.draw(x.shape[0], x.device, generator)
        return color_jitter(x, p["factors"], p["order"], p["apply"], self.active)

    def extra_repr(self) -> str:
        return f"ranges={self.ranges}, p={self.p}"


class RandomGrayscale(nn.Module):
    """torchvision's `RandomGrayscale(p)`: luma (truncated to uint8) in all three channels, per sample."""

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        self.p = float(p)

    def draw(self, n: int, device, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-sample parameters: `apply` (N, bool)."""
        return {"apply": coin((n,), self.p, device, generator)}

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        flag = self.draw(x.shape[0], x.device, generator)["apply"].view(-1, 1, 1, 1)
        return torch.where(flag, grayscale(x).to(torch.uint8).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur sample i with a `kernel_size` Gaussian of std `sigma[i]` (reflect padding, as torchvision),
    as two separable passes of per-sample kernels through one grouped convolution each."""
    n, c, h, w = x.shape
    lim = (kernel_size - 1) / 2.0
    offsets = torch.linspace(-lim, lim, kernel_size, device=x.device)
    kernel = torch.softmax(-((offsets / sigma.view(n, 1)) ** 2) / 2.0, dim=1)  # N x k, sums to 1
    weight = kernel.repeat_interleave(c, dim=0)  # one kernel per (sample, channel) group
    pad = kernel_size // 2
    img = F.pad(x.float().reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    img = F.conv2d(img, weight.view(n * c, 1, kernel_size, 1), groups=n * c)
    img = F.conv2d(img, weight.view(n * c, 1, 1, kernel_size), groups=n * c)
    return img.view(n, c, h, w).round().to(torch.uint8)


class GaussianBlur(nn.Module):
    """`RandomApply([GaussianBlur(kernel_size, sigma=(lo, hi))], p)` per sample, sigma uniform per sample.

    The kernel size is static (one compiled shape); by default it covers three sigmas of the largest sigma,
    close to PIL's radius-based blur that MoCo/BCL's `GaussianBlur([.1, 2.])` uses.
    """

    def __init__(
        self, sigma: tuple[float, float] = (0.1, 2.0), p: float = 0.5, kernel_size: int | None = None
    ):
        super().__init__()
        if not 0 < sigma[0] <= sigma[1]:
            raise ValueError(f"GaussianBlur sigma range must satisfy 0 < lo <= hi, got {sigma}")
        self.sigma, self.p = (float(sigma[0]), float(sigma[1])), float(p)
        self.kernel_size = kernel_size or 2 * math.ceil(3 * self.sigma[1]) + 1
        if self.kernel_size % 2 == 0:
            raise ValueError(f"GaussianBlur kernel_size must be odd, got {self.kernel_size}")

    def draw(self, n: int, device, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-sample parameters: `sigma` (N) and `apply` (N, bool)."""
        sigma = _uniform(n, *self.sigma, device, generator)
        return {"sigma": sigma, "apply": coin((n,), self.p, device, generator)}

    def size_for(self, x: torch.Tensor) -> int:
        """The kernel size used on `x`: at most its side (reflect padding needs pad < size)."""
        return min(self.kernel_size, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        p = self.draw(x.shape[0], x.device, generator)
        flag = p["apply"].view(-1, 1, 1, 1)
        return torch.where(flag, gaussian_blur(x, p["sigma"], self.size_for(x)), x)
