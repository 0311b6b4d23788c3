"""Batched geometric ops: one inverse affine matrix per sample, one `grid_sample` for the whole batch.

Matrices follow torchvision's `_get_inverse_affine_matrix` convention (output pixel -> input pixel, in pixel
coordinates centred on the image), and the sampling grid is built exactly as torchvision's `_affine_grid`,
so nearest-neighbour sampling picks the same source pixel as `transforms.v2.functional.affine` / `rotate`.
Samples whose op is not geometric get the identity matrix, which nearest sampling reproduces exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .policies import OP_ID

AFFINE_OPS = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})


def _matrix(name: str, a: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """The six entries (m00, m01, m02, m10, m11, m12) of op `name` with argument `a` (float64, N)."""
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    if name == "ShearX":  # torchvision shears about the top-left corner (center=[0, 0])
        return one, a, a * (height / 2), zero, one, zero
    if name == "ShearY":
        return one, zero, zero, a, one, a * (width / 2)
    if name == "TranslateX":
        return one, zero, -a, zero, one, zero
    if name == "TranslateY":
        return one, zero, zero, zero, one, -a
    if name == "Rotate":  # counter-clockwise by `a` degrees about the centre
        rad = a * (math.pi / 180.0)
        cos, sin = rad.cos(), rad.sin()
        return cos, -sin, zero, sin, cos, zero
    raise ValueError(f"{name!r} is not a geometric op; choose from {sorted(AFFINE_OPS)}")


def affine_matrices(
    op: torch.Tensor, arg: torch.Tensor, present: frozenset[str], height: int, width: int
) -> torch.Tensor:
    """Per-sample inverse affine matrices (N x 2 x 3, float32); identity where `op` is not geometric."""
    # float64 for the trigonometry, like torchvision's Python floats, then float32 like its theta.
    a = arg.to(torch.float64)
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    theta = torch.stack([one, zero, zero, zero, one, zero], dim=1)
    for name in sorted(present & AFFINE_OPS):
        candidate = torch.stack(_matrix(name, a, height, width), dim=1)
        theta = torch.where((op == OP_ID[name]).unsqueeze(1), candidate, theta)
    return theta.view(-1, 2, 3).to(torch.float32)


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torchvision's `_affine_grid` for a batch of matrices: N x H x W x 2 normalised sampling positions."""
    device = theta.device
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device)
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height, device=device)
    base = torch.stack(
        [
            xs.expand(height, width),
            ys.unsqueeze(1).expand(height, width),
            torch.ones_like(xs).expand(height, width),
        ],
        dim=-1,
    ).view(1, height * width, 3)
    t = theta.transpose(1, 2)
    rescaled = torch.stack([t[..., 0] / (0.5 * width), t[..., 1] / (0.5 * height)], dim=-1)
    return base.expand(theta.shape[0], -1, -1).bmm(rescaled).view(-1, height, width, 2)


def warp(x: torch.Tensor, theta: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour warp of uint8 images by per-sample matrices; pixels from outside get `fill` (C,)."""
    height, width = x.shape[-2:]
    grid = affine_grid(theta, height, width)
    fill = fill.view(1, -1, 1, 1)
    # Sampling (x - fill) with zero padding, then adding fill back, fills the outside with `fill` exactly
    # (nearest sampling moves integers), without torchvision's extra mask channel.
    out = F.grid_sample(x.float() - fill, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return (out + fill).round_().to(torch.uint8)


def affine_ops(
    x: torch.Tensor, op: torch.Tensor, arg: torch.Tensor, present: frozenset[str], fill: torch.Tensor
) -> torch.Tensor:
    """Apply, per sample, the geometric op `op[i]` with argument `arg[i]`; other samples pass unchanged."""
    height, width = x.shape[-2:]
    return warp(x, affine_matrices(op, arg, present, height, width), fill)


# --- PIL's affine transforms, for the released DBM CIFAR AutoAugment (a PIL policy) -------------------------
#
# PIL maps each output pixel centre (x + 0.5, y + 0.5) to an input position (a x' + b y' + c, d x' + e y' + f)
# (the "inverse" coefficients below, in pixel units from the top-left corner). How it samples depends on
# the path Image.transform takes (Pillow's libImaging/Geometry.c), and each is reproduced here:
# - nearest, no rotation (translate): input index floor(position) (ImagingScaleAffine);
# - nearest, rotation: 16.16 fixed-point coefficients FIX(v) = floor(v * 65536 + 0.5), input index
#   (FIX(c') + y FIX(b) + x FIX(a)) >> 16 (affine_fixed; images under 16k pixels always take this path);
# - bicubic (shear): the generic transform: outside [0, size) -> fill; else a cubic convolution of the 4 x 4
#   neighbours (edge-clamped) with PIL's a = -1 kernel in double precision, clipped and truncated to uint8.
# Positions are computed in float64 like PIL's doubles, so the ops match PIL pixel for pixel on CPU.

PIL_NEAREST_OPS = frozenset({"TranslateX", "TranslateY", "Rotate"})
PIL_BICUBIC_OPS = frozenset({"ShearX", "ShearY"})


def pil_coefficients(
    op: torch.Tensor, arg: torch.Tensor, present: frozenset[str], height: int, width: int
) -> torch.Tensor:
    """Per-sample PIL coefficients (a, b, c, d, e, f), N x 6 float64; identity where `op` is not geometric.

    ShearX/Y: (1, m, 0, 0, 1, 0) / (1, 0, 0, m, 1, 0); TranslateX/Y: (1, 0, t, 0, 1, 0) / (1, 0, 0, 0, 1, t)
    with t in pixels; Rotate: `Image.rotate(degrees)` about the centre (w / 2, h / 2), counter-clockwise.
    """
    a = arg.to(torch.float64)
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    rad = -a * (math.pi / 180.0)  # Image.rotate: angle = -math.radians(angle)
    cos, sin = torch.round(rad.cos(), decimals=15), torch.round(rad.sin(), decimals=15)
    msin = torch.round(-rad.sin(), decimals=15)
    cx, cy = width / 2, height / 2
    rows = {
        "ShearX": (one, a, zero, zero, one, zero),
        "ShearY": (one, zero, zero, a, one, zero),
        "TranslateX": (one, zero, a, zero, one, zero),
        "TranslateY": (one, zero, zero, zero, one, a),
        # Image.rotate: (c, f) = matrix applied to (-cx, -cy) (with a 0.0 offset), plus (cx, cy)
        "Rotate": (cos, sin, cos * -cx + sin * -cy + 0.0 + cx, msin, cos, msin * -cx + cos * -cy + 0.0 + cy),
    }
    coeffs = torch.stack([one, zero, zero, zero, one, zero], dim=1)
    for name in sorted(present & AFFINE_OPS):
        coeffs = torch.where((op == OP_ID[name]).unsqueeze(1), torch.stack(rows[name], dim=1), coeffs)
    return coeffs


def _pixel_grid(n: int, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.arange(height, device=device, dtype=torch.float64).view(1, height, 1).expand(n, height, width)
    xs = torch.arange(width, device=device, dtype=torch.float64).view(1, 1, width).expand(n, height, width)
    return xs, ys


def _pil_nearest_index(coeffs: torch.Tensor, rotate: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Input (x, y) indices (N x H x W x 2, int64) of PIL's nearest-neighbour affine paths."""
    n = coeffs.shape[0]
    xs, ys = _pixel_grid(n, height, width, coeffs.device)
    a, b, c, d, e, f = (v.view(n, 1, 1) for v in coeffs.unbind(1))
    # scale/translate path: floor of the position of the pixel centre
    scale_x = (c + a * 0.5 + xs * a).floor()
    scale_y = (f + e * 0.5 + ys * e).floor()

    def fix(v: torch.Tensor) -> torch.Tensor:
        return (v * 65536.0 + 0.5).floor().to(torch.int64)

    xi, yi = xs.to(torch.int64), ys.to(torch.int64)
    fixed_x = (fix(c + a * 0.5 + b * 0.5) + yi * fix(b) + xi * fix(a)) >> 16
    fixed_y = (fix(f + d * 0.5 + e * 0.5) + yi * fix(e) + xi * fix(d)) >> 16
    r = rotate.view(n, 1, 1)
    return torch.stack(
        [torch.where(r, fixed_x, scale_x.to(torch.int64)), torch.where(r, fixed_y, scale_y.to(torch.int64))],
        dim=-1,
    )


def _gather(x: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor) -> torch.Tensor:
    """x[n, :, iy, ix] for in-range N x H x W indices (N x C x H x W, x's dtype)."""
    n, c, h, w = x.shape
    flat = (iy * w + ix).view(n, 1, -1).expand(n, c, -1)
    return x.reshape(n, c, h * w).gather(2, flat).view(n, c, *iy.shape[1:])


def _cubic(v1: torch.Tensor, v2: torch.Tensor, v3: torch.Tensor, v4: torch.Tensor, d: torch.Tensor):
    """PIL's BICUBIC macro, term for term (the same double-precision operations in the same order)."""
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def _pil_bicubic(x: torch.Tensor, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's generic bicubic affine transform: (uint8 values, inside mask N x 1 x H x W)."""
    n, _, h, w = x.shape
    xs, ys = _pixel_grid(n, h, w, x.device)
    a, b, c, d, e, f = (v.view(n, 1, 1) for v in coeffs.unbind(1))
    xin = a * (xs + 0.5) + b * (ys + 0.5) + c
    yin = d * (xs + 0.5) + e * (ys + 0.5) + f
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    xin, yin = xin - 0.5, yin - 0.5
    x0, y0 = xin.floor(), yin.floor()
    dx, dy = (xin - x0).unsqueeze(1), (yin - y0).unsqueeze(1)
    cols = [(x0.to(torch.int64) + k - 1).clamp(0, w - 1) for k in range(4)]
    rows = []
    for k in range(4):
        row = (y0.to(torch.int64) + k - 1).clamp(0, h - 1)
        rows.append(_cubic(*(_gather(x, col, row).to(torch.float64) for col in cols), dx))
    v = _cubic(*rows, dy)
    out = torch.where(v <= 0, 0.0, torch.where(v >= 255, 255.0, v)).to(torch.uint8)  # C's (UINT8) truncation
    return out, inside.unsqueeze(1)


def pil_affine_ops(
    x: torch.Tensor, op: torch.Tensor, arg: torch.Tensor, present: frozenset[str], fill: torch.Tensor
) -> torch.Tensor:
    """Per sample, PIL's transform for geometric op `op[i]` (argument `arg[i]`, see `pil_coefficients`):
    nearest for translate and rotate, bicubic for shear; pixels from outside the image get `fill` (C,)."""
    n, c, h, w = x.shape
    present = present & AFFINE_OPS
    coeffs = pil_coefficients(op, arg, present, h, w)
    fill = fill.to(x.device).round().to(torch.uint8).view(1, c, 1, 1)
    index = _pil_nearest_index(coeffs, op == OP_ID["Rotate"], h, w)
    ix, iy = index.unbind(-1)
    inside = ((ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)).unsqueeze(1)
    picked = _gather(x, ix.clamp(0, w - 1), iy.clamp(0, h - 1))
    out = torch.where(inside, picked, fill)
    if present & PIL_BICUBIC_OPS:
        cubic, cubic_inside = _pil_bicubic(x, coeffs)
        shear = torch.zeros_like(op, dtype=torch.bool)
        for name in present & PIL_BICUBIC_OPS:
            shear = shear | (op == OP_ID[name])
        out = torch.where(shear.view(n, 1, 1, 1), torch.where(cubic_inside, cubic, fill), out)
    return out
