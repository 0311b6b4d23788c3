"""Logit maps (scaled cosine, DBM, LDAM, FBL): forward(output, target) -> the logits the objective sees.

Float32 (or float64) logits [N, C], or for the target-column-only margins (DBM, LDAM) `TargetLogits`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

from losses import functional as LF
from losses.config import LossConfig
from losses.cross_entropy import TargetLogits, target_column
from losses.functional import at_least_float32
from losses.output import ModelOutput
from losses.parts import Part, require


class LinearLogits(Part):
    """A linear head's logits, as they are."""

    def forward(self, output: ModelOutput, target: Tensor) -> Tensor:
        return at_least_float32(output.logits)


class ScaledCosine(Part):
    """`s * cos θ`: the plain cosine classifier (the cosine head without DBM)."""

    uses = ("scale",)

    def forward(self, output: ModelOutput, target: Tensor) -> Tensor:
        return self.scale * at_least_float32(output.logits)


class DBMargin(Part):
    """DBM logits (`functional.dbm_logits`): class margin from the counts, instance margin on hard positives,
    added to the target angle."""

    uses = ("scale", "max_margin", "tau", "lambda_inst", "margin_norm", "detach_difficulty")

    def __init__(self, class_counts: Tensor, cfg: LossConfig) -> None:
        super().__init__(class_counts, cfg)
        margins = LF.class_margins(class_counts, cfg.max_margin, cfg.tau, cfg.margin_norm)
        self.register_buffer("margins", margins, persistent=False)

    def forward(self, output: ModelOutput, target: Tensor) -> TargetLogits:
        cos = at_least_float32(output.logits)
        z_y = LF.dbm_target_logit(
            cos, target, self.margins, self.scale, self.lambda_inst, self.detach_difficulty
        )
        return TargetLogits(self.scale * cos, z_y)

    def describe(self, class_counts: Sequence[int]) -> list[tuple[int, str]]:
        """The margin range, and a warning when the released code's normaliser (the last label's count) and
        the paper's (the rarest class's) give margins that differ by more than 1%."""
        lines = [
            (
                logging.INFO,
                f"DBM class margins (loss.margin_norm={self.margin_norm}): "
                f"{float(self.margins.min()):.4f} .. {float(self.margins.max()):.4f}",
            )
        ]
        gap = LF.margin_norm_gap(class_counts, self.tau)
        if gap > 0.01:
            message = (
                f"loss.margin_norm: 'last' (the released code) gives every class a margin {100 * gap:.1f}% "
                f"larger than 'min' (the paper): the last label has {class_counts[-1]} images, the rarest "
                f"class {min(class_counts)}; this run uses {self.margin_norm!r}"
            )
            lines.append((logging.WARNING, message))
        return lines


class LDAMargin(Part):
    """LDAM (`functional.ldam_margins`): subtract m_y from the target column (CosFace-style), then scale
    every column."""

    uses = ("ldam_max_margin", "ldam_scale")

    def __init__(self, class_counts: Tensor, cfg: LossConfig) -> None:
        super().__init__(class_counts, cfg)
        self.register_buffer("margins", LF.ldam_margins(class_counts, cfg.ldam_max_margin), persistent=False)

    def forward(self, output: ModelOutput, target: Tensor) -> TargetLogits:
        x = at_least_float32(output.logits)
        z_y = self.ldam_scale * (target_column(x, target) - self.margins[target])
        return TargetLogits(self.ldam_scale * x, z_y)


class FeatureBalance(Part):
    """FBL (ICME 2022): every column lowered by `curr * A * λ_c / ||f||`; the curriculum is a 0-dim buffer.

    In eval mode the curriculum counts as 0 (plain CE), as the released validation does.
    """

    uses = ("fbl_weight",)

    def __init__(self, class_counts: Tensor, cfg: LossConfig) -> None:
        super().__init__(class_counts, cfg)
        self.register_buffer("strengths", LF.fbl_strengths(class_counts), persistent=False)
        self.register_buffer("curriculum", torch.zeros((), device=class_counts.device), persistent=False)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.curriculum.fill_(LF.fbl_curriculum(epoch, epochs))

    def forward(self, output: ModelOutput, target: Tensor) -> Tensor:
        if not self.training:
            return at_least_float32(output.logits)
        features = output.features
        require(
            features.ndim == 2 and features.shape[0] == output.logits.shape[0],
            f"fbl: features must be [N, d] with N = {output.logits.shape[0]}, got {tuple(features.shape)}",
        )
        return LF.fbl_logits(output.logits, features, self.strengths, self.fbl_weight, self.curriculum)
