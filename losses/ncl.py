"""Nested Collaborative Learning (NCL, CVPR 2022) as the DBM release runs it: `ncl`, `ncl_linear`, `dbm_ncl`.

K experts classify the same view; ℓ_k = map(expert k's raw output) + log n_c, m the hard-category mask
from expert 0's raw output:

    L = Σ_k CE(ℓ_k) + Σ_k CE(ℓ_k ⊙ m) + NBOD(ℓ) + NBOD(ℓ ⊙ m) + w Σ_k InfoNCE_k

as the release's `NIL_NBOD` plus its MoCo term (quotation2520/dbm_ltr `cifar/losses/ncl.py`,
`cifar/models/resnet_ncl.py:389-451`). Differences from the release: docs/FIDELITY.md, "NCL".
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from losses.config import LossConfig
from losses.cross_entropy import TargetLogits, one_hot_mask
from losses.functional import at_least_float32
from losses.logit_maps import DBMargin, LinearLogits, ScaledCosine
from losses.modules import Loss
from losses.output import ExpertOutput, ModelOutput
from losses.parts import Part, require

LOG_EPS = 1e-9  # NBOD's log(softmax + 1e-9), as released


def hard_category_mask(scores: Tensor, target: Tensor, k: int) -> Tensor:
    """0/1 mask [N, C]: each row's k highest scores, with the target column always kept.

    The release writes 999999 into the target column, sorts descending and keeps the first k indices; +inf
    and `topk` select the same set (between equal non-target scores either may pick another column).
    k >= C keeps every column. No gradient flows through the mask.
    """
    scores = at_least_float32(scores.detach())
    k = min(int(k), scores.shape[1])
    forced = scores.masked_fill(one_hot_mask(target, scores.shape[1]), math.inf)
    return torch.zeros_like(scores).scatter(1, forced.topk(k, dim=1).indices, 1.0)


def nbod(logits: Tensor, factor: float) -> Tensor:
    """Nested balanced online distillation over K experts' logits [K, N, C]:

    factor / (K - 1) * Σ_{i≠j} KL(p_j ‖ p_i), each KL `F.kl_div(log(p_i + 1e-9), p_j, "batchmean")` =
    Σ p_j (log p_j - log(p_i + 1e-9)) / N with 0 log 0 = 0, and p_j not detached (both ends learn), as
    released. All ordered pairs in one [K, K, N, C] pass; K = 1 gives 0.
    """
    k, n = logits.shape[:2]
    if k < 2:
        return logits.new_zeros(())
    p = logits.softmax(dim=-1)
    log_p = (p + LOG_EPS).log()
    # [i, j]: p_j (log p_j - log p~_i), the pointwise terms of F.kl_div(log p~_i, p_j)
    kl = (torch.xlogy(p, p).unsqueeze(0) - p.unsqueeze(0) * log_p.unsqueeze(1)).sum(dim=(2, 3))
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=logits.device)
    return factor * torch.where(off_diagonal, kl, 0.0).sum() / (n * (k - 1))


def nil_nbod(logits: Tensor, mask: Tensor, target: Tensor, diversity: float) -> Tensor:
    """NCL's classification loss on balanced logits ℓ [K, N, C] and the hard-category mask [N, C]:
    Σ_k CE(ℓ_k) + Σ_k CE(ℓ_k ⊙ m) + NBOD(ℓ) + NBOD(ℓ ⊙ m). Masked-out logits become 0, not -inf (released)."""
    k, n, c = logits.shape
    masked = logits * mask
    targets = target.repeat(k)
    # Σ_k (mean over the batch) = K * the mean over the K*N rows.
    ce = k * F.cross_entropy(logits.reshape(k * n, c), targets)
    ce_hcm = k * F.cross_entropy(masked.reshape(k * n, c), targets)
    return ce + ce_hcm + nbod(logits, diversity) + nbod(masked, diversity)


def info_nce(contrast: Tensor, temperature: float) -> Tensor:
    """MoCo's InfoNCE per expert, summed over the experts: contrast [K, N, 1+Q] holds [q.k, q.queue] per
    query; CE(contrast / T, label 0), the mean over the batch for each expert."""
    z = at_least_float32(contrast) / temperature
    return (z.logsumexp(dim=-1) - z[..., 0]).sum() / contrast.shape[1]


class NestedBalanced(Part):
    """NCL's classification objective: `nil_nbod` on the experts' logits + log n_c, with the hard-category
    mask from expert 0's raw output (before any margin or scale).

    log n_c, not log p_c: the two differ by a constant that softmax ignores, but the masked logits ℓ ⊙ m
    keep it on the kept columns only, so the hard-category terms would change."""

    uses = ("ncl_hcm_n", "ncl_diversity")

    def __init__(self, class_counts: Tensor, cfg: LossConfig) -> None:
        super().__init__(class_counts, cfg)
        self.register_buffer("log_counts", class_counts.log().float(), persistent=False)

    def forward(self, logits: Tensor, scores: Tensor, target: Tensor) -> Tensor:
        """logits [K, N, C] from the logit map, scores [N, C] expert 0's raw output, target [N]."""
        mask = hard_category_mask(scores, target, self.ncl_hcm_n)
        return nil_nbod(logits + self.log_counts, mask, target, self.ncl_diversity)


class ExpertContrast(Part):
    """Adds the experts' MoCo term: loss + ncl_contrast_weight * Σ_k InfoNCE_k at ncl_temperature."""

    uses = ("ncl_contrast_weight", "ncl_temperature")

    def forward(self, loss: Tensor, output: ExpertOutput, target: Tensor) -> Tensor:
        return loss + self.ncl_contrast_weight * info_nce(output.contrast_logits, self.ncl_temperature)


def expert_rows(output: ExpertOutput) -> ModelOutput:
    """The K experts' outputs as one `ModelOutput` of K*N rows (expert-major), for a registry logit map:
    features [N, K*d] -> [K*N, d], expert_logits [K, N, C] -> [K*N, C]."""
    k, n, c = output.expert_logits.shape
    features = output.features.reshape(n, k, -1).transpose(0, 1).reshape(k * n, -1)
    return ModelOutput(features, output.expert_logits.reshape(k * n, c))


class NCLLoss(Loss):
    """The NCL total of the module docstring, assembled from (logit map, `NestedBalanced`, `ExpertContrast`).

    The `Loss` contract, with `num_views` = 2 (the classification view and the MoCo key view) and `model` =
    "ncl_experts": the output must be an NCL model's training `ExpertOutput`. The logit map sees every
    expert's rows at once, so DBM's hard flag of a row is its own expert's argmax, as the release's
    per-expert call.
    """

    num_views = 2
    model = "ncl_experts"

    def forward(self, output: Any, target: Tensor) -> Tensor:
        self._check(output, target)
        raw = output.expert_logits
        k, n, c = raw.shape
        rows = target.repeat(k)
        logits = self.logit_map(expert_rows(output), rows)
        if isinstance(logits, TargetLogits):  # the mask multiplies every column: the dense form is needed
            logits = logits.dense(rows)
        loss = self.objective(logits.reshape(k, n, c), raw[0], target)
        return self.contrast(loss, output, target)

    def _check(self, output: Any, target: Tensor) -> None:
        raw = getattr(output, "expert_logits", None)
        contrast = getattr(output, "contrast_logits", None)
        require(
            raw is not None and contrast is not None,
            f"loss {self.name!r} needs a multi-expert model's output (expert_logits and contrast_logits: "
            "an NCL model in training mode)",
        )
        assert raw is not None and contrast is not None  # for type checkers
        require(
            raw.ndim == 3 and raw.shape[2] == self.num_classes,
            f"loss {self.name!r} was built for {self.num_classes} classes and expects expert_logits "
            f"[K, N, {self.num_classes}], got {tuple(raw.shape)}",
        )
        require(
            target.shape == raw.shape[1:2],
            f"loss {self.name!r}: target must be [N] = [{raw.shape[1]}] class indices, "
            f"got {tuple(target.shape)}",
        )
        require(
            contrast.ndim == 3 and contrast.shape[:2] == raw.shape[:2] and contrast.shape[2] >= 2,
            f"loss {self.name!r}: contrast_logits must be [K, N, 1+Q] = "
            f"[{raw.shape[0]}, {raw.shape[1]}, 1+Q], got {tuple(contrast.shape)}",
        )
        features = output.features
        k, n = raw.shape[:2]
        require(
            features.ndim == 2 and features.shape[0] == n and features.shape[1] % k == 0,
            f"loss {self.name!r}: features must be [N, K*d] = [{raw.shape[1]}, {raw.shape[0]}*d], "
            f"got {tuple(features.shape)}",
        )


class DBMNCL(NCLLoss):
    """DBM-NCL: each expert's raw cosines through DBM, then + log n_c. The release uses s = 16 here (its NCL
    model constructor overwrites `cos_scale`, `resnet_ncl.py:812`): the recipes set `loss.scale = 16`
    (LossConfig's default, 30, is the large-scale cosine classifier's)."""

    name, head, parts = "dbm_ncl", "cosine", (DBMargin, NestedBalanced, ExpertContrast)


class NCL(NCLLoss):
    """NCL on s·cos, the DBM release's `--loss_fn ncl --use_norm` without `--use_dbm`: its NIL_NBOD skips
    DBMargin, the only place s is applied, so the raw cosines reach CE unscaled: `--loss.scale=1` runs it
    so (LossConfig's default is 30). The NCL baseline recipes use `ncl_linear` instead (see there)."""

    name, head, parts = "ncl", "cosine", (ScaledCosine, NestedBalanced, ExpertContrast)


class NCLLinear(NCLLoss):
    """NCL on a linear head's logits: upstream NCL's CIFAR config (`CLASSIFIER.TYPE: FC`), and the DBM
    release without `--use_norm`. The baseline recipes (`configs/cifar*_lt_ncl.toml`) use it: the DBM paper's
    Table 2 baselines are its linear-head runs (its CE and BS rows equal Table 5's "linear classifier")."""

    name, head, parts = "ncl_linear", "linear", (LinearLogits, NestedBalanced, ExpertContrast)


NCL_LOSSES: tuple[type[NCLLoss], ...] = (NCL, NCLLinear, DBMNCL)
