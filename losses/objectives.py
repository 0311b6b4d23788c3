"""Objectives (CE, DRW, Balanced Softmax, logit adjustment): forward(logits, target) -> 0-dim loss.

`logits` is a float tensor [N, C] or, from DBM and LDAM, `TargetLogits` (see `functional.cross_entropy`).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from losses import functional as LF
from losses.config import LossConfig
from losses.cross_entropy import TargetLogits, cross_entropy
from losses.parts import Part


class CrossEntropy(Part):
    def forward(self, logits: Tensor | TargetLogits, target: Tensor) -> Tensor:
        return cross_entropy(logits, target)


class LogitAdjustment(Part):
    """CE(z + la_tau * log p): the logit-adjusted loss (Menon et al., ICLR 2021). The prior is added after
    scaling (to DBM's `s * cos` as to linear logits); prediction stays the argmax of the model's logits."""

    uses = ("la_tau",)

    def __init__(self, class_counts: Tensor, cfg: LossConfig) -> None:
        super().__init__(class_counts, cfg)
        self.register_buffer("log_prior", self.prior_weight() * LF.log_prior(class_counts), persistent=False)

    def prior_weight(self) -> float:
        return self.la_tau

    def forward(self, logits: Tensor | TargetLogits, target: Tensor) -> Tensor:
        return cross_entropy(logits, target, prior=self.log_prior)


class BalancedSoftmax(LogitAdjustment):
    """CE(z + log p): Balanced Softmax, also BCL's LogitAdjust: the logit adjustment with τ fixed at 1."""

    uses = ()

    def prior_weight(self) -> float:
        return 1.0


class DeferredReweighting(Part):
    """DRW (`functional.drw_weights`): CE until the switch epoch, class-balanced weighted CE from it on.

    The switch is `drw_epoch` (0-indexed; 160 of 200 as released) or, when `drw_fraction` > 0,
    round(drw_fraction * epochs). Weighted mean with the batch's weight sum as denominator (PyTorch's).
    """

    uses = ("drw_epoch", "drw_fraction", "drw_beta")

    def __init__(self, class_counts: Tensor, cfg: LossConfig) -> None:
        super().__init__(class_counts, cfg)
        balanced = LF.drw_weights(class_counts, cfg.drw_beta)
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
