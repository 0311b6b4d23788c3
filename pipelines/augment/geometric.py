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
