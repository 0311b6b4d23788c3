"""Logit maps (spec/losses.md §2-§5): forward(output, target) -> the logits the objective sees.

Float32 (or float64) logits [N, C], or for the target-column-only margins (DBM, LDAM) `TargetLogits`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losses import functional as LF
from losses.cross_entropy import TargetLogits, target_column
from losses.functional import at_least_float32
from losses.output import ModelOutput
from losses.parts import Part, require


class LinearLogits(Part):
    """A linear head's logits, as they are."""

    def __init__(self, class_counts: Tensor) -> None:
        super().__init__()

    def forward(self, output: ModelOutput, target: Tensor) -> Tensor:
        return at_least_float32(output.logits)


class ScaledCosine(Part):
    """`s * cos θ`: the plain cosine classifier (the cosine head without DBM)."""

    def __init__(self, class_counts: Tensor, *, scale: float = 30.0) -> None:
        super().__init__()
        require(scale > 0, f"scale must be > 0, got {scale}")
        self.scale = scale

    def forward(self, output: ModelOutput, target: Tensor) -> Tensor:
        return self.scale * at_least_float32(output.logits)


class DBMargin(Part):
    """DBM logits (§3): class margin from the counts, instance margin on hard positives, applied in angle."""

    def __init__(
        self,
        class_counts: Tensor,
        *,
        scale: float = 30.0,
        max_margin: float = 0.1,
        tau: float = 1.0,
        lambda_inst: float = 1.0,
        margin_norm: str = "min",
        detach_difficulty: bool = False,
    ) -> None:
        super().__init__()
        require(scale > 0, f"scale must be > 0, got {scale}")
        require(max_margin >= 0, f"max_margin must be >= 0, got {max_margin}")
        require(tau >= 0, f"tau must be >= 0, got {tau}")
        require(lambda_inst >= 0, f"lambda_inst must be >= 0, got {lambda_inst}")
        self.scale, self.max_margin, self.tau, self.lambda_inst = scale, max_margin, tau, lambda_inst
        self.margin_norm, self.detach_difficulty = margin_norm, detach_difficulty
        margins = LF.class_margins(class_counts, max_margin, tau, margin_norm)
        self.register_buffer("margins", margins, persistent=False)

    def forward(self, output: ModelOutput, target: Tensor) -> TargetLogits:
        cos = at_least_float32(output.logits)
        z_y = LF.dbm_target_logit(
            cos, target, self.margins, self.scale, self.lambda_inst, self.detach_difficulty
        )
        return TargetLogits(self.scale * cos, z_y)


class LDAMargin(Part):
    """LDAM (§4.6): subtract m_y from the target column (CosFace-style), then scale every column."""

    def __init__(
        self, class_counts: Tensor, *, ldam_max_margin: float = 0.5, ldam_scale: float = 30.0
    ) -> None:
        super().__init__()
        require(ldam_max_margin >= 0, f"ldam_max_margin must be >= 0, got {ldam_max_margin}")
        require(ldam_scale > 0, f"ldam_scale must be > 0, got {ldam_scale}")
        self.ldam_max_margin, self.ldam_scale = ldam_max_margin, ldam_scale
        self.register_buffer("margins", LF.ldam_margins(class_counts, ldam_max_margin), persistent=False)

    def forward(self, output: ModelOutput, target: Tensor) -> TargetLogits:
        x = at_least_float32(output.logits)
        z_y = self.ldam_scale * (target_column(x, target) - self.margins[target])
        return TargetLogits(self.ldam_scale * x, z_y)


class FeatureBalance(Part):
    """FBL (§5): every column lowered by `curr * A * λ_c / ||f||`; the curriculum is a 0-dim buffer.

    In eval mode the curriculum counts as 0 (plain CE), as the released validation does.
    """

    def __init__(self, class_counts: Tensor, *, fbl_weight: float = 150.0) -> None:
        super().__init__()
        require(fbl_weight >= 0, f"fbl_weight must be >= 0, got {fbl_weight}")
        self.fbl_weight = fbl_weight
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
