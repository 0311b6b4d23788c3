"""AutoAugment on a uint8 batch: every image draws its own sub-policy, coins and signs.

Policies "imagenet" and "cifar10" are torchvision's `AutoAugment` (its magnitudes, signs and tensor
kernels). "cifar10_dbm" is the one the released DBM CIFAR runs used (dbm_ltr cifar/aug/autoaug.py, a PIL
policy): the same 25 sub-policies with PIL's kernels (`pil_apply_ops`) and the release's magnitudes
(`policies.pil_magnitudes`): unsigned rotate, bicubic shear, fractional translate, solarize thresholds on
256, factors `1 +- m` for the enhance ops.
"""

from __future__ import annotations

import torch
from torch import nn

from .colour import lut_ops
from .geometric import AFFINE_OPS, pil_affine_ops
from .ops import IDENTITY, apply_ops, by_op, check_ops, coin, fill_tensor
from .pil_colour import PIL_OWN_OPS, pil_colour_ops
from .policies import (
    AUTOAUGMENT_BINS,
    AUTOAUGMENT_KERNELS,
    AUTOAUGMENT_POLICIES,
    OP_ID,
    PIL_SIGNED,
    TORCHVISION_SIGNED,
    magnitude_table,
    pil_arg,
    pil_magnitudes,
    signed_mask,
    torchvision_arg,
)

PIL_SHARED_LUT_OPS = frozenset({"Posterize", "Solarize", "Equalize", "Invert"})  # colour.py's equal PIL's


def pil_apply_ops(
    x: torch.Tensor, op: torch.Tensor, arg: torch.Tensor, present, fill: torch.Tensor
) -> torch.Tensor:
    """`ops.apply_ops` with PIL's kernels: sample i gets op `OPS[op[i]]` with argument `arg[i]`, as the PIL
    policy computes it on one image (see `policies` for the arguments)."""
    present = check_ops(present)
    if present & PIL_SHARED_LUT_OPS:
        x = lut_ops(x, op, arg, present & PIL_SHARED_LUT_OPS)
    if present & PIL_OWN_OPS:
        x = pil_colour_ops(x, op, arg, present)
    if present & AFFINE_OPS:
        x = pil_affine_ops(x, op, arg, present, fill)
    return x


class BatchAutoAugment(nn.Module):
    """An AutoAugment policy per image, for the whole batch at once.

    Sample i picks one of the 25 sub-policies uniformly; each of its two ops fires with its own probability
    (`rand <= p`, as torchvision; the PIL policy's `random() < p` differs on a set of measure zero), and
    signed magnitudes get a random sign per sample.
    """

    def __init__(self, policy: str = "imagenet", fill=(128, 128, 128)) -> None:
        super().__init__()
        if policy not in AUTOAUGMENT_POLICIES:
            raise ValueError(
                f"unknown AutoAugment policy {policy!r}; choose from {list(AUTOAUGMENT_POLICIES)}"
            )
        self.policy = policy
        self.kernels = AUTOAUGMENT_KERNELS[policy]
        table = AUTOAUGMENT_POLICIES[policy]
        self.stages = len(table[0])
        ops = [[OP_ID[name] for name, _, _ in sub] for sub in table]
        probs = [[p for _, p, _ in sub] for sub in table]
        bins = [[0 if b is None else b for _, _, b in sub] for sub in table]
        # Static per stage: which ops it can draw, so families it never uses are skipped.
        self.present = [frozenset(sub[j][0] for sub in table) | {"Identity"} for j in range(self.stages)]
        self.names = frozenset().union(*self.present)
        self.register_buffer("ops", torch.tensor(ops, dtype=torch.int64), persistent=False)
        self.register_buffer("probs", torch.tensor(probs, dtype=torch.float32), persistent=False)
        self.register_buffer("bins", torch.tensor(bins, dtype=torch.int64), persistent=False)
        pil = self.kernels == "pil"
        self.register_buffer(
            "signed", signed_mask(PIL_SIGNED if pil else TORCHVISION_SIGNED), persistent=False
        )
        # The PIL policy's magnitudes do not depend on the image size: one float64 table, built once.
        self.register_buffer("table", pil_magnitudes() if pil else torch.zeros(0), persistent=False)
        self.register_buffer("fill", fill_tensor(fill), persistent=False)

    def draw(self, n: int, height: int, width: int, generator: torch.Generator | None = None) -> dict:
        """Per-sample parameters: `subpolicy` (N), `op` (N x 2, Identity where the op did not fire), `arg`."""
        device = self.ops.device
        sub = torch.randint(len(self.ops), (n,), device=device, generator=generator)
        fire = coin((n, self.stages), self.probs[sub], device, generator)
        negative = coin((n, self.stages), 0.5, device, generator)
        op = self.ops[sub]
        if self.kernels == "pil":
            value = self.table[op, self.bins[sub]]
            value = torch.where(self.signed[op] & negative, -value, value)
            arg = by_op(op, self.names & AFFINE_OPS, lambda name: pil_arg(name, value, height, width), value)
        else:
            value = magnitude_table(AUTOAUGMENT_BINS, height, width, device)[op, self.bins[sub]]
            value = torch.where(self.signed[op] & negative, -value, value)
            arg = by_op(op, self.names, lambda name: torchvision_arg(name, value), value)
        return {"subpolicy": sub, "op": torch.where(fire, op, IDENTITY), "arg": arg}

    def apply(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        """The drawn ops on the batch, a pure function of tensors: compilable, the generator stays outside."""
        run = pil_apply_ops if self.kernels == "pil" else apply_ops
        for j in range(self.stages):
            x = run(x, p["op"][:, j], p["arg"][:, j], self.present[j], self.fill)
        return x

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.draw(x.shape[0], x.shape[-2], x.shape[-1], generator))

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}, fill={self.fill.tolist()}"
