"""Nested Collaborative Learning (spec/losses.md §4.5, fidelity-audit §4.1): `ncl`, `ncl_linear`, `dbm_ncl`.

K experts classify the same view. With ℓ_k = map(expert k's raw output) + log n_c (raw counts) and m the
hard-category mask taken from expert 0's raw output:

    L = Σ_k CE(ℓ_k) + Σ_k CE(ℓ_k ⊙ m) + NBOD(ℓ) + NBOD(ℓ ⊙ m) + w Σ_k InfoNCE_k

as the DBM release's `NIL_NBOD` plus its combiner's MoCo term (`dbm_ltr:cifar/losses/ncl.py`,
`cifar/models/resnet_ncl.py:389-451`). The map is DBM with s = 16 (`dbm_ncl`), s·cos (`ncl`: the
release's `--use_norm` without `--use_dbm`, where the cosines reach the loss unscaled, s = 1), or the
logits as they are (`ncl_linear`: upstream NCL's linear head). The model hands over `ExpertOutput`:
`expert_logits` [K, N, C] and `contrast_logits` [K, N, 1+Q] (the model owns the queue and enqueues).

The class counts enter as log n_c, not log p_c: the two differ by a constant that softmax ignores, but the
masked logits ℓ ⊙ m keep it on the kept columns only, so the hard-category terms would change.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losses import functional as LF
from losses.cross_entropy import one_hot_mask
from losses.functional import at_least_float32
from losses.parts import require

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


class NCLLossBase(nn.Module):
    """The NCL total of the module docstring; subclasses choose the logit map (`expert_map`).

    The same contract as `losses.Loss`: `forward(output, target) -> 0-dim loss`, class attributes `name`,
    `head` (the classifier the model needs) and `num_views` (2: the classification view and the MoCo key
    view), `params()` (keyword arguments and defaults) and `set_epoch` (no epoch state here); and
    `multi_expert`, which says that the output must come from an NCL model.
    """

    name: ClassVar[str]
    head: ClassVar[str]
    num_views: ClassVar[int] = 2
    multi_expert: ClassVar[bool] = True  # needs a multi-expert model (trainer.ncl_model), not build_model's

    @classmethod
    def params(cls) -> dict[str, Any]:
        signature = inspect.signature(cls.__init__)
        return {p.name: p.default for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY}

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        *,
        ncl_hcm_n: int,
        ncl_diversity: float,
        ncl_contrast_weight: float,
        ncl_temperature: float,
    ) -> None:
        super().__init__()
        require(ncl_hcm_n >= 1, f"ncl_hcm_n must be >= 1, got {ncl_hcm_n}")
        require(ncl_diversity >= 0, f"ncl_diversity must be >= 0, got {ncl_diversity}")
        require(ncl_contrast_weight >= 0, f"ncl_contrast_weight must be >= 0, got {ncl_contrast_weight}")
        require(ncl_temperature > 0, f"ncl_temperature must be > 0, got {ncl_temperature}")
        self.ncl_hcm_n, self.ncl_diversity = ncl_hcm_n, ncl_diversity
        self.ncl_contrast_weight, self.ncl_temperature = ncl_contrast_weight, ncl_temperature
        counts = LF.as_counts(class_counts)
        self.num_classes = counts.numel()
        self.register_buffer("log_counts", counts.log().float(), persistent=False)

    def expert_map(self, raw: Tensor, target: Tensor) -> Tensor:
        """[R, C] raw outputs (the K experts' rows stacked) -> logits before the log-count shift."""
        raise NotImplementedError

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """No epoch-dependent state."""

    def _check(self, output: Any, target: Tensor) -> tuple[Tensor, Tensor]:
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
        return raw, contrast

    def forward(self, output: Any, target: Tensor) -> Tensor:
        raw, contrast = self._check(output, target)
        k, n, c = raw.shape
        raw = at_least_float32(raw)
        mask = hard_category_mask(raw[0], target, self.ncl_hcm_n)  # expert 0, before any margin
        logits = self.expert_map(raw.reshape(k * n, c), target.repeat(k)).reshape(k, n, c) + self.log_counts
        loss = nil_nbod(logits, mask, target, self.ncl_diversity)
        return loss + self.ncl_contrast_weight * info_nce(contrast, self.ncl_temperature)

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self.params())


class NCL(NCLLossBase):
    """NCL on s·cos, the DBM release's `--loss_fn ncl --use_norm` without `--use_dbm`: its NIL_NBOD skips
    DBMargin, the only place s is applied, so the raw cosines reach CE unscaled. Hence the default s = 1."""

    name, head = "ncl", "cosine"

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        *,
        scale: float = 1.0,
        ncl_hcm_n: int = 30,
        ncl_diversity: float = 0.6,
        ncl_contrast_weight: float = 1.0,
        ncl_temperature: float = 0.2,
    ) -> None:
        super().__init__(
            class_counts,
            ncl_hcm_n=ncl_hcm_n,
            ncl_diversity=ncl_diversity,
            ncl_contrast_weight=ncl_contrast_weight,
            ncl_temperature=ncl_temperature,
        )
        require(scale > 0, f"scale must be > 0, got {scale}")
        self.scale = scale

    def expert_map(self, raw: Tensor, target: Tensor) -> Tensor:
        return self.scale * raw


class NCLLinear(NCLLossBase):
    """NCL on a linear head's logits: upstream NCL's CIFAR config (`CLASSIFIER.TYPE: FC`), and the DBM
    release without `--use_norm`."""

    name, head = "ncl_linear", "linear"

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        *,
        ncl_hcm_n: int = 30,
        ncl_diversity: float = 0.6,
        ncl_contrast_weight: float = 1.0,
        ncl_temperature: float = 0.2,
    ) -> None:
        super().__init__(
            class_counts,
            ncl_hcm_n=ncl_hcm_n,
            ncl_diversity=ncl_diversity,
            ncl_contrast_weight=ncl_contrast_weight,
            ncl_temperature=ncl_temperature,
        )

    def expert_map(self, raw: Tensor, target: Tensor) -> Tensor:
        return raw


class DBMNCL(NCLLossBase):
    """DBM-NCL: each expert's raw cosines through DBM (`losses.functional.dbm_logits`, s = 16 because the
    release's NCL model constructor overwrites `cos_scale`, `resnet_ncl.py:812`), then + log n_c."""

    name, head = "dbm_ncl", "cosine"

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        *,
        scale: float = 16.0,
        max_margin: float = 0.1,
        tau: float = 1.0,
        lambda_inst: float = 1.0,
        margin_norm: str = "min",
        detach_difficulty: bool = False,
        ncl_hcm_n: int = 30,
        ncl_diversity: float = 0.6,
        ncl_contrast_weight: float = 1.0,
        ncl_temperature: float = 0.2,
    ) -> None:
        super().__init__(
            class_counts,
            ncl_hcm_n=ncl_hcm_n,
            ncl_diversity=ncl_diversity,
            ncl_contrast_weight=ncl_contrast_weight,
            ncl_temperature=ncl_temperature,
        )
        require(scale > 0, f"scale must be > 0, got {scale}")
        require(max_margin >= 0, f"max_margin must be >= 0, got {max_margin}")
        require(tau >= 0, f"tau must be >= 0, got {tau}")
        require(lambda_inst >= 0, f"lambda_inst must be >= 0, got {lambda_inst}")
        self.scale, self.max_margin, self.tau, self.lambda_inst = scale, max_margin, tau, lambda_inst
        self.margin_norm, self.detach_difficulty = margin_norm, detach_difficulty
        margins = LF.class_margins(class_counts, max_margin, tau, margin_norm)
        self.register_buffer("margins", margins, persistent=False)

    def expert_map(self, raw: Tensor, target: Tensor) -> Tensor:
        # Row-wise: the hard flag of each row is its own expert's argmax, as the release's per-expert call.
        return LF.dbm_logits(
            raw, target, self.margins, self.scale, self.lambda_inst, detach_difficulty=self.detach_difficulty
        )


NCL_LOSSES: tuple[type[NCLLossBase], ...] = (NCL, NCLLinear, DBMNCL)
