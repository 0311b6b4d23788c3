"""Objectives (spec/losses.md §4): forward(logits, target) -> 0-dim loss.

`logits` is a float tensor [N, C] or, from DBM and LDAM, `TargetLogits` (see `functional.cross_entropy`).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from losses import functional as LF
from losses.cross_entropy import TargetLogits, cross_entropy
from losses.parts import Part, require


class CrossEntropy(Part):
    def __init__(self, class_counts: Tensor) -> None:
        super().__init__()

    def forward(self, logits: Tensor | TargetLogits, target: Tensor) -> Tensor:
        return cross_entropy(logits, target)


class BalancedSoftmax(Part):
    """CE(z + log p): Balanced Softmax, also BCL's LogitAdjust (τ = 1). The prior is added after scaling."""

    def __init__(self, class_counts: Tensor) -> None:
        super().__init__()
        self.register_buffer("log_prior", LF.log_prior(class_counts), persistent=False)

    def forward(self, logits: Tensor | TargetLogits, target: Tensor) -> Tensor:
        return cross_entropy(logits, target, prior=self.log_prior)


class DeferredReweighting(Part):
    """DRW (§4.2): CE until the switch epoch, class-balanced weighted CE from it on.

    The switch is `drw_epoch` (0-indexed; 160 of 200 as released) or, when `drw_fraction` > 0,
    round(drw_fraction * epochs). Weighted mean with the batch's weight sum as denominator (PyTorch's).
    """

    def __init__(
        self,
        class_counts: Tensor,
        *,
        drw_epoch: int = 160,
        drw_fraction: float = 0.0,
        drw_beta: float = 0.9999,
    ) -> None:
        super().__init__()
        require(drw_epoch >= 0, f"drw_epoch must be >= 0, got {drw_epoch}")
        require(
            0.0 <= drw_fraction <= 1.0,
            f"drw_fraction must be in [0, 1] (0: use drw_epoch), got {drw_fraction}",
        )
        self.drw_epoch, self.drw_fraction, self.drw_beta = drw_epoch, drw_fraction, drw_beta
        balanced = LF.drw_weights(class_counts, drw_beta)
        self.register_buffer("balanced_weight", balanced, persistent=False)
        self.register_buffer("weight", torch.ones_like(balanced), persistent=False)

    def start_epoch(self, epochs: int) -> int:
        return round(self.drw_fraction * epochs) if self.drw_fraction > 0 else self.drw_epoch

    def set_epoch(self, epoch: int, epochs: int) -> None:
        start = self.start_epoch(epochs)
        if epoch == 0 and start >= epochs:
            warnings.warn(
                f"DRW starts at epoch {start} but the run has {epochs} epochs: it never re-weights "
                "(set drw_epoch or drw_fraction)",
                stacklevel=3,
            )
        if epoch >= start:
            self.weight.copy_(self.balanced_weight)
        else:
            self.weight.fill_(1.0)

    def forward(self, logits: Tensor | TargetLogits, target: Tensor) -> Tensor:
        return cross_entropy(logits, target, weight=self.weight)
