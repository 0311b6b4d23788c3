"""PIL's colour arithmetic, batched: the released DBM CIFAR AutoAugment runs on PIL images.

DeepVoltaire's policy (dbm_ltr cifar/aug/autoaug.py) calls `ImageEnhance.{Brightness, Color, Contrast,
Sharpness}(img).enhance(f)` and `ImageOps.*`. Their uint8 results differ from torchvision's tensor kernels
(`colour.py`) by one level in up to half of the pixels, so this module reproduces PIL's arithmetic bit for
bit (Pillow's ImageEnhance.py, ImageOps.py, libImaging/Blend.c, Convert.c, Filter.c; each function states
its formula). Posterize, Solarize (with PIL's float threshold), Equalize and Invert already equal PIL's in
`colour.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .policies import OP_ID

PIL_ENHANCE_OPS = frozenset({"Brightness", "Color", "Contrast", "Sharpness"})
PIL_OWN_OPS = PIL_ENHANCE_OPS | {"AutoContrast"}


def pil_grey(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L conversion (ITU-R 601-2 in 16.16 fixed point, rounded), int32 N x 1 x H x W."""
    r, g, b = x.to(torch.int32).unbind(dim=1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1)


def pil_blend(degenerate: torch.Tensor, image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """`Image.blend(degenerate, image, factor)` on uint8: float32 `deg + f * (img - deg)`, clipped to 0..255
    and truncated; `factor` is per sample (N, float64: the C float is its float32 rounding)."""
    deg = degenerate.to(torch.float32)
    f = factor.to(torch.float32).view(-1, 1, 1, 1)
    return (deg + f * (image.to(torch.float32) - deg)).clamp(0, 255).trunc().to(torch.uint8)


def _contrast_mean(x: torch.Tensor) -> torch.Tensor:
    """`int(ImageStat.Stat(img.convert("L")).mean[0] + 0.5)`, per sample (N x 1 x 1 x 1)."""
    grey = pil_grey(x)
    total = grey.sum(dim=(1, 2, 3), dtype=torch.int64).to(torch.float64)
    count = torch.full_like(total, grey[0].numel())  # a true division, as Python's (not by a reciprocal)
    return (total / count + 0.5).floor().view(-1, 1, 1, 1)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """`img.filter(ImageFilter.SMOOTH)`: the 3 x 3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]], round(weighted
    sum / 13) inside, the border copied. The weighted
    sum is an integer, so PIL's float32 `sum + 0.5` truncation is exactly (sum + 6) // 13."""
    h, w = x.shape[-2:]
    if h < 3 or w < 3:
        return x
    v = F.pad(x.to(torch.int32), (1, 1, 1, 1))
    rows = v[:, :, :-2] + v[:, :, 1:-1] + v[:, :, 2:]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    smooth = ((box + 4 * x.to(torch.int32) + 6) // 13).to(torch.uint8)
    r = torch.arange(h, device=x.device).view(h, 1)
    c = torch.arange(w, device=x.device).view(1, w)
    interior = (r > 0) & (r < h - 1) & (c > 0) & (c < w - 1)
    return torch.where(interior, smooth, x)


def pil_enhance(name: str, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """`ImageEnhance.<name>(img).enhance(factor[i])` for every sample i."""
    if name == "Brightness":
        degenerate = torch.zeros_like(x)
    elif name == "Color":
        degenerate = pil_grey(x).expand_as(x)
    elif name == "Contrast":
        degenerate = _contrast_mean(x).expand_as(x)
    elif name == "Sharpness":
        degenerate = _smooth(x)
    else:
        raise ValueError(f"{name!r} is not an ImageEnhance op; choose from {sorted(PIL_ENHANCE_OPS)}")
    return pil_blend(degenerate, x, factor)


def pil_autocontrast(x: torch.Tensor) -> torch.Tensor:
    """`ImageOps.autocontrast(img)` (cutoff 0), per sample and channel: int(v * 255 / (hi - lo) - lo * 255 /
    (hi - lo)) in double precision; a flat channel is left as it is."""
    # int16: Inductor's CPU code for a uint8 min-reduction returns 0 (torch 2.14.1, contiguous layout)
    wide = x.to(torch.int16)
    lo = wide.amin(dim=(2, 3), keepdim=True).to(torch.float64)
    hi = wide.amax(dim=(2, 3), keepdim=True).to(torch.float64)
    flat = hi <= lo
    # tensor / tensor: torch computes `scalar / tensor` as `scalar * reciprocal`, one rounding more than
    # Python's 255.0 / (hi - lo), which moves values like 254.99999999999997 up to 255
    scale = torch.full_like(hi, 255.0) / torch.where(flat, 1.0, hi - lo)
    offset = -lo * scale
    stretched = (x.to(torch.float64) * scale + offset).trunc().clamp(0, 255).to(torch.uint8)
    return torch.where(flat, x, stretched)


def pil_colour_ops(x: torch.Tensor, op: torch.Tensor, arg: torch.Tensor, present: frozenset[str]):
    """Per sample, the PIL colour op `op[i]` (enhance ops: factor 1 + arg[i]); other samples unchanged."""
    n = x.shape[0]
    out = x
    factor = 1.0 + arg.to(torch.float64)  # the release's `1 + magnitude * sign`, in double precision
    for name in sorted(present & PIL_ENHANCE_OPS):
        out = torch.where((op == OP_ID[name]).view(n, 1, 1, 1), pil_enhance(name, x, factor), out)
    if "AutoContrast" in present:
        out = torch.where((op == OP_ID["AutoContrast"]).view(n, 1, 1, 1), pil_autocontrast(x), out)
    return out
