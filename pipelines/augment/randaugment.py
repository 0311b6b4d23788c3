"""RandAugment on a uint8 batch: every image draws its own ops, magnitudes and signs.

Two flavours share the kernels:

- `style="torchvision"` (default): torchvision's `transforms.v2.RandAugment` — 14 ops (Identity included),
  magnitude `m` a bin of `num_magnitude_bins` (31) grids, every drawn op applied.
- `style="timm"`: timm's `rand-m{m}-n{n}-mstd{s}` — its 15 ops (Invert, SolarizeAdd, relative translate),
  magnitude on timm's 0..10 level scale, each drawn op applied with probability 0.5: the large-scale papers'
  "rand-n2-m10-mstd0.5" (fill = the ImageNet mean), sampled nearest (docs/FIDELITY.md, difference 5).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .ops import IDENTITY, apply_ops, by_op, coin, fill_tensor
from .policies import (
    OP_ID,
    RANDAUGMENT_STYLES,
    TIMM_LEVEL_MAX,
    TIMM_RANDAUGMENT_OPS,
    TORCHVISION_RANDAUGMENT_OPS,
    magnitude_table,
    signed_mask,
    timm_arg,
    torchvision_arg,
)


class BatchRandAugment(nn.Module):
    """`num_ops` ops per image at magnitude `magnitude`. `magnitude_std > 0` draws each op's magnitude from
    N(m, std), clipped to the scale (0..bins-1, or 0..10), per sample and per op (timm's `mstd`); `inf` draws
    it uniformly from [0, m], as timm does. Between bins the torchvision grids are interpolated linearly."""

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 9.0,
        *,
        magnitude_std: float = 0.0,
        num_magnitude_bins: int = 31,
        style: str = "torchvision",
        op_prob: float | None = None,
        fill=(128, 128, 128),
    ) -> None:
        super().__init__()
        if style not in RANDAUGMENT_STYLES:
            raise ValueError(f"unknown RandAugment style {style!r}; choose from {list(RANDAUGMENT_STYLES)}")
        if not isinstance(num_ops, int) or num_ops < 0:
            raise ValueError(f"RandAugment num_ops must be a non-negative integer, got {num_ops!r}")
        self.max_level = float(num_magnitude_bins - 1) if style == "torchvision" else TIMM_LEVEL_MAX
        if not 0.0 <= magnitude <= self.max_level:
            raise ValueError(
                f"RandAugment magnitude {magnitude} outside [0, {self.max_level:g}] for style {style!r}"
            )
        if magnitude_std < 0:
            raise ValueError(f"RandAugment magnitude_std must be >= 0, got {magnitude_std}")
        self.num_ops, self.magnitude, self.magnitude_std = num_ops, float(magnitude), float(magnitude_std)
        self.num_magnitude_bins, self.style = num_magnitude_bins, style
        self.op_prob = (1.0 if style == "torchvision" else 0.5) if op_prob is None else float(op_prob)
        self.names = TORCHVISION_RANDAUGMENT_OPS if style == "torchvision" else TIMM_RANDAUGMENT_OPS
        self.present = frozenset(self.names) | {"Identity"}
        self.register_buffer("op_ids", torch.tensor([OP_ID[n] for n in self.names]), persistent=False)
        self.register_buffer("signed", signed_mask(), persistent=False)
        self.register_buffer("fill", fill_tensor(fill), persistent=False)

    def _levels(self, shape: tuple[int, ...], device, generator) -> torch.Tensor:
        m = torch.full(shape, self.magnitude, device=device)
        if self.magnitude_std == 0:
            return m
        if math.isinf(self.magnitude_std):
            return torch.rand(shape, device=device, generator=generator) * self.magnitude
        noise = torch.randn(shape, device=device, generator=generator)
        return (m + self.magnitude_std * noise).clamp(0.0, self.max_level)

    def draw(self, n: int, height: int, width: int, generator: torch.Generator | None = None) -> dict:
        """Per-sample parameters: `op` (N x num_ops, Identity where the op did not fire) and `arg`."""
        device = self.op_ids.device
        shape = (n, self.num_ops)
        op = self.op_ids[torch.randint(len(self.names), shape, device=device, generator=generator)]
        fire = coin(shape, self.op_prob, device, generator)
        negative = coin(shape, 0.5, device, generator)
        level = self._levels(shape, device, generator)
        if self.style == "torchvision":
            table = magnitude_table(self.num_magnitude_bins, height, width, device)
            lo = level.floor().long()
            hi = (lo + 1).clamp(max=self.num_magnitude_bins - 1)
            value = table[op, lo] + (table[op, hi] - table[op, lo]) * (level - lo)  # exact at whole bins
            value = torch.where(self.signed[op] & negative, -value, value)
            arg = by_op(op, self.names, lambda name: torchvision_arg(name, value), value)
        else:

            def timm_signed(name: str) -> torch.Tensor:
                value, signed = timm_arg(name, level, height, width)
                return torch.where(negative, -value, value) if signed else value

            arg = by_op(op, self.names, timm_signed, level)
        return {"op": torch.where(fire, op, IDENTITY), "arg": arg}

    def apply(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        """The drawn ops on the batch, a pure function of tensors: compilable, the generator stays outside."""
        for j in range(self.num_ops):
            x = apply_ops(x, p["op"][:, j], p["arg"][:, j], self.present, self.fill)
        return x

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.draw(x.shape[0], x.shape[-2], x.shape[-1], generator))

    def extra_repr(self) -> str:
        return (
            f"num_ops={self.num_ops}, magnitude={self.magnitude:g}, magnitude_std={self.magnitude_std:g}, "
            f"style={self.style!r}, op_prob={self.op_prob:g}, fill={self.fill.tolist()}"
        )
