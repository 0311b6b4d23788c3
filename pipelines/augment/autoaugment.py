"""AutoAugment on a uint8 batch: every image draws its own sub-policy, coins and signs."""

from __future__ import annotations

import torch
from torch import nn

from .ops import IDENTITY, apply_ops, by_op, coin, fill_tensor
from .policies import (
    AUTOAUGMENT_BINS,
    AUTOAUGMENT_POLICIES,
    OP_ID,
    magnitude_table,
    signed_mask,
    torchvision_arg,
)


class BatchAutoAugment(nn.Module):
    """torchvision's `AutoAugment(policy)` per image, for the whole batch at once.

    Sample i picks one of the 25 sub-policies uniformly; each of its two ops fires with its own probability
    (`rand <= p`, as torchvision), and signed magnitudes get a random sign per sample.
    """

    def __init__(self, policy: str = "imagenet", fill=(128, 128, 128)) -> None:
        super().__init__()
        if policy not in AUTOAUGMENT_POLICIES:
            raise ValueError(
                f"unknown AutoAugment policy {policy!r}; choose from {list(AUTOAUGMENT_POLICIES)}"
            )
        self.policy = policy
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
        self.register_buffer("signed", signed_mask(), persistent=False)
        self.register_buffer("fill", fill_tensor(fill), persistent=False)

    def draw(self, n: int, height: int, width: int, generator: torch.Generator | None = None) -> dict:
        """Per-sample parameters: `subpolicy` (N), `op` (N x 2, Identity where the op did not fire), `arg`."""
        device = self.ops.device
        sub = torch.randint(len(self.ops), (n,), device=device, generator=generator)
        fire = coin((n, self.stages), self.probs[sub], device, generator)
        negative = coin((n, self.stages), 0.5, device, generator)
        op = self.ops[sub]
        value = magnitude_table(AUTOAUGMENT_BINS, height, width, device)[op, self.bins[sub]]
        value = torch.where(self.signed[op] & negative, -value, value)
        arg = by_op(op, self.names, lambda name: torchvision_arg(name, value), value)
        return {"subpolicy": sub, "op": torch.where(fire, op, IDENTITY), "arg": arg}

    def apply(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        """The drawn ops on the batch, a pure function of tensors: compilable, the generator stays outside."""
        for j in range(self.stages):
            x = apply_ops(x, p["op"][:, j], p["arg"][:, j], self.present[j], self.fill)
        return x

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.draw(x.shape[0], x.shape[-2], x.shape[-1], generator))

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}, fill={self.fill.tolist()}"
