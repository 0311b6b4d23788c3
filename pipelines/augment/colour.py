"""Batched colour ops with one parameter per sample, uint8 in and out.

Every op that maps a pixel value through a per-(sample, channel) function of it alone (brightness, contrast,
posterize, solarize, autocontrast, equalize, invert, ...) is a 256-entry lookup table chosen per sample with
`torch.where`, so the image is read once whatever the ops; saturation and sharpness are blended instead.
The arithmetic copies torchvision's `transforms.v2.functional` kernels (float32, truncation to uint8), so a
sample matches torchvision's op on the same image to the last bit in almost every pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .policies import OP_ID

LUT_OPS = frozenset(
    {"Brightness", "Contrast", "Posterize", "Solarize", "SolarizeAdd", "AutoContrast", "Equalize", "Invert"}
)
BLEND_OPS = frozenset({"Color", "Sharpness"})


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma as torchvision computes it (float32, N x 1 x H x W), from uint8 or float RGB."""
    r, g, b = x.unbind(dim=1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def _by_channel(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A free view of the pixels as N x C x L (contiguous input) or N x L x C (channels_last), and the pixel
    dim, so lookups and histograms run along memory order."""
    n, c = x.shape[:2]
    if _is_channels_last(x):
        return x.permute(0, 2, 3, 1).reshape(n, -1, c), 1
    return x.reshape(n, c, -1), 2


def _equalize_lut(hist: torch.Tensor) -> torch.Tensor:
    """PIL's equalisation table from per-(sample, channel) histograms (N x C x 256 int64), as torchvision."""
    num_pixels = hist.sum(dim=-1, keepdim=True)
    cum = hist.cumsum(dim=-1)
    last = cum.argmax(dim=-1, keepdim=True)  # the last non-empty bin: where the cumulative count first peaks
    step = (num_pixels - hist.gather(-1, last)).div(255, rounding_mode="floor")
    lut = (cum[..., :-1] + step // 2).div(step.clamp(min=1), rounding_mode="floor").clamp(0, 255)
    lut = torch.cat([torch.zeros_like(lut[..., :1]), lut], dim=-1)
    identity = torch.arange(256, device=hist.device).expand_as(lut)
    return torch.where(step != 0, lut, identity).to(torch.float32)


def blend(image: torch.Tensor, degenerate: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """torchvision's `_blend` with factor 1 + m: `image * (1 + m) - m * degenerate`, clamped to 0..255.

    Written as torchvision's float32 `mul(ratio).add_(other, alpha=1 - ratio)`, whose alpha is exactly -m,
    so the result truncates to the same uint8 values.
    """
    return torch.addcmul(image * (1.0 + m), degenerate, -m).clamp(0, 255)


def _lut(name: str, x: torch.Tensor, index: torch.Tensor, arg: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The float32 table (N x C x 256, or broadcastable to it) of one op; `arg` is N x 1 x 1; `index` is
    `flat_index(x)`."""
    n, c = x.shape[:2]
    if name == "Brightness":
        return (v * (1.0 + arg)).clamp(0, 255).trunc()
    if name == "Contrast":
        mean = grayscale(x).floor().mean(dim=(1, 2, 3)).view(n, 1, 1)
        return blend(v, mean, arg).trunc()
    if name == "Posterize":
        step = torch.exp2(8.0 - arg.clamp(0, 8))
        return (v / step).floor() * step
    if name == "Solarize":
        return torch.where(v >= arg, 255.0 - v, v)
    if name == "SolarizeAdd":
        return torch.where(v < 128, (v + arg).clamp(max=255), v)
    if name == "AutoContrast":
        view, dim = _by_channel(x)
        # Reduced as int16: Inductor's CPU code for a uint8 min-reduction returns 0 on contiguous input
        # (torch 2.14.1, aminmax included); compiled, the widening fuses into the one reduction pass.
        lo, hi = torch.aminmax(view.to(torch.int16), dim=dim)
        lo, hi = lo.view(n, c, 1).float(), hi.view(n, c, 1).float()
        flat = hi == lo
        inv_scale = torch.where(flat, 1.0, (hi - lo) * (1.0 / 255.0))
        return ((v - torch.where(flat, 0.0, lo)) / inv_scale).clamp(0, 255).trunc()
    if name == "Equalize":
        return _equalize_lut(histograms(index, n, c).long())
    if name == "Invert":
        return 255.0 - v
    raise ValueError(f"{name!r} is not a lookup-table op; choose from {sorted(LUT_OPS)}")


def flat_index(x: torch.Tensor) -> torch.Tensor:
    """For every pixel, its position in the flattened N x C x 256 table of its (sample, channel):
    `(i * C + ch) * 256 + value`, int32 (N*C*256 < 2^31 for any batch a GPU holds), laid out in `x`'s memory
    order, made by one kernel (uint8 in, int32 out). It serves both the histogram and the lookup; the int64
    index that `gather` and `scatter_add_` need costs twice the bytes, written and read (under torch.compile
    the index fuses into the lookup kernel and is never materialised at all)."""
    n, c = x.shape[:2]
    view, dim = _by_channel(x)
    offsets = torch.arange(0, n * c * 256, 256, dtype=torch.int32, device=x.device).view(n, c, 1)
    return view + (offsets if dim == 2 else offsets.transpose(1, 2))  # uint8 + int32: one int32 pass


def histograms(index: torch.Tensor, n: int, c: int) -> torch.Tensor:
    """Per-(sample, channel) histograms of the pixel values (N x C x 256, int32) from `flat_index`."""
    flat = index.reshape(-1)
    hist = torch.zeros(n * c * 256, dtype=torch.int32, device=index.device)
    ones = torch.ones((), dtype=torch.int32, device=index.device).expand_as(flat)
    return hist.index_add_(0, flat, ones).view(n, c, 256)


def lookup(lut: torch.Tensor, index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`lut` (N x C x 256 uint8) applied to every pixel of `x` through `flat_index(x)`; same layout as x."""
    n, c, h, w = x.shape
    out = lut.reshape(-1).index_select(0, index.reshape(-1))  # int32 index: no int64 copy of the batch
    if _is_channels_last(x):
        return out.view(n, h, w, c).permute(0, 3, 1, 2)
    return out.view(n, c, h, w)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def lut_ops(x: torch.Tensor, op: torch.Tensor, arg: torch.Tensor, present: frozenset[str]) -> torch.Tensor:
    """Apply, per sample, the lookup-table op `op[i]` with argument `arg[i]`; other samples pass unchanged."""
    n, c = x.shape[:2]
    index = flat_index(x)
    v = torch.arange(256, dtype=torch.float32, device=x.device).view(1, 1, 256)
    op, arg = op.view(n, 1, 1), arg.view(n, 1, 1).float()
    lut = v.expand(n, c, 256)
    for name in sorted(present & LUT_OPS):
        lut = torch.where(op == OP_ID[name], _lut(name, x, index, arg, v), lut)
    return lookup(lut.to(torch.uint8), index, x)


def blend_ops(x: torch.Tensor, op: torch.Tensor, arg: torch.Tensor, present: frozenset[str]) -> torch.Tensor:
    """Apply, per sample, Color (saturation) or Sharpness, factor `1 + arg[i]`; other samples unchanged."""
    n, _, h, w = x.shape
    op, m = op.view(n, 1, 1, 1), arg.view(n, 1, 1, 1).float()
    xf = x.float()
    out = x
    if "Color" in present:
        color = blend(xf, grayscale(x).floor(), m).to(torch.uint8)
        out = torch.where(op == OP_ID["Color"], color, out)
    if "Sharpness" in present and h > 2 and w > 2:
        rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
        interior = (rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)
        out = torch.where((op == OP_ID["Sharpness"]) & interior, _sharpness(xf, m), out)
    return out


def _sharpness(xf: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """PIL's sharpness on the interior: blend with the 3x3 smoothing [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13.

    The smoothing is an exact integer 3x3 box sum (shifted adds; a depthwise convolution or average pool is
    many times slower on CPU) plus 4x the centre; rounded, it equals torchvision's convolution exactly, as
    (integer sum) / 13 is never within 1/26 of a rounding tie. The caller keeps the one-pixel border.
    """
    padded = F.pad(xf, (1, 1, 1, 1))
    rows = padded[:, :, :-2] + padded[:, :, 1:-1] + padded[:, :, 2:]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    blurred = ((box + 4.0 * xf) / 13.0).round()
    # torchvision's `x.add_(blurred - x, alpha=1 - factor)`, alpha = -m
    return torch.addcmul(xf, blurred - xf, -m).clamp(0, 255).to(torch.uint8)
