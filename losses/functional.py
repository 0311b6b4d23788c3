"""The losses' pure functions (DBM, FBL, DRW, LDAM, priors): tensors in, tensors out, differentiable.

Class-count helpers return float32 tensors on the device of `class_counts` (CPU for a list); they are
computed once, when a loss is built. `dbm_logits` and `fbl_logits` run in every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

from losses.cross_entropy import TargetLogits, one_hot_mask, target_column

MarginNorm = Literal["min", "last"]  # DBM's reference count: n_min (the paper) or the last label's (released)


def at_least_float32(x: Tensor) -> Tensor:
    """Half-precision (autocast) inputs are computed in float32; float32 and float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def as_counts(class_counts: Sequence[int] | Tensor) -> Tensor:
    """Check per-class training counts; return them as float64 (exact logs and powers)."""
    counts = torch.as_tensor(class_counts)
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D sequence, got shape {tuple(counts.shape)}")
    if counts.is_floating_point() and not bool((counts == counts.round()).all()):
        raise ValueError("class_counts must be whole numbers of training images")
    bad = (counts <= 0).nonzero().flatten()
    if bad.numel():
        k = int(bad[0])
        raise ValueError(f"class_counts must all be positive: class {k} has {counts[k].item()} images")
    return counts.to(torch.float64)


def class_margins(
    class_counts: Sequence[int] | Tensor, max_margin: float = 0.1, tau: float = 1.0, margin_norm: str = "min"
) -> Tensor:
    """DBM class-wise margins `K * (n_ref / n_c) ** tau`.

    margin_norm="min" (the paper): n_ref = n_min, so the rarest class gets exactly `max_margin` whatever the
    label order. "last" (the released code): n_ref = the count of the last label index, which exceeds K for
    classes rarer than that one when labels are not sorted by frequency.
    """
    if margin_norm not in get_args(MarginNorm):
        raise ValueError(f"margin_norm must be one of {', '.join(get_args(MarginNorm))}; got {margin_norm!r}")
    n = as_counts(class_counts)
    ref = n.min() if margin_norm == "min" else n[-1]
    return (max_margin * (ref / n) ** tau).float()


def margin_norm_gap(class_counts: Sequence[int] | Tensor, tau: float = 1.0) -> float:
    """How much larger every DBM margin is under margin_norm="last" than under "min": the two normalisers
    differ by the single factor (n_last / n_min) ** tau, returned minus one (0 when the last label is the
    rarest class, as in CIFAR-LT's frequency-sorted labels)."""
    n = as_counts(class_counts)
    return float((n[-1] / n.min()) ** tau) - 1.0


def is_hard(cos: Tensor, target: Tensor) -> Tensor:
    """`argmax(cos) != target`, ties going to the first maximal index (as `argmax` and the released code
    do): does a column before y reach cos_y, or one after it exceed cos_y? A boolean row reduction that the
    compiler fuses with the loss's own passes, where an index reduction is a pass of its own (on CPU the
    argmax alone costs about half a cross-entropy)."""
    cos = cos.detach()
    cos_y = cos.gather(1, target.unsqueeze(1))
    before = torch.arange(cos.shape[1], device=cos.device) < target.unsqueeze(1)
    return torch.where(before, cos >= cos_y, cos > cos_y).any(dim=1)


def dbm_target_logit(
    cosine: Tensor,
    target: Tensor,
    margins: Tensor,
    scale: float,
    lambda_inst: float = 1.0,
    detach_difficulty: bool = False,
) -> Tensor:
    """`s * cos(θ_y + M)` for each row's target column, [N]; see `dbm_logits`."""
    cos = at_least_float32(cosine)
    cos_y = target_column(cos, target)
    hard = is_hard(cos, target).to(cos.dtype)
    difficulty = (1.0 - cos_y) / 2.0
    if detach_difficulty:
        difficulty = difficulty.detach()
    margin = margins[target] * (1.0 + lambda_inst * hard * difficulty)
    sin_y = (1.0 - cos_y * cos_y).clamp_min(1e-12).sqrt()  # sin(arccos c) >= 0; the floor keeps d/dc finite
    return scale * (cos_y * torch.cos(margin) - sin_y * torch.sin(margin))


def dbm_logits(
    cosine: Tensor,
    target: Tensor,
    margins: Tensor,
    scale: float,
    lambda_inst: float = 1.0,
    *,
    detach_difficulty: bool = False,
    nan_guard: bool = True,
) -> Tensor:
    """DBM logits [N, C]: `s*cos(θ_y + M)` on the target column, `s*cos θ` elsewhere (float32 or wider).

    M = m_y * (1 + lambda_inst * hard * (1 - cos_y) / 2), hard = (argmax of the raw cosines != target),
    a flag without gradient. The difficulty term stays in the graph unless `detach_difficulty`.

    nan_guard=True (default) evaluates only the target column, through the identity
    cos(θ+M) = cos θ cos M - sqrt(max(1 - cos²θ, 1e-12)) sin M: equal to the released arccos form wherever
    that is finite, and finite in value and gradient at (and past) |cos| = 1. nan_guard=False is the
    released code verbatim: arccos -> +M -> cos on every column, NaN once rounding pushes a cosine past ±1.
    """
    if cosine.ndim != 2 or margins.shape != cosine.shape[1:]:
        raise ValueError(
            f"dbm_logits: cosine must be [N, C] with C = len(margins) = {margins.shape[0]}, "
            f"got {tuple(cosine.shape)}"
        )
    cos = at_least_float32(cosine)
    if nan_guard:
        z_y = dbm_target_logit(cos, target, margins, scale, lambda_inst, detach_difficulty)
        return TargetLogits(scale * cos, z_y).dense(target)
    hard = (cos.argmax(dim=1) != target).to(cos.dtype)  # ties go to the first maximal index
    difficulty = (1.0 - cos) / 2.0
    if detach_difficulty:
        difficulty = difficulty.detach()
    margin = (
        margins * one_hot_mask(target, cos.shape[1]) * (1.0 + lambda_inst * hard.unsqueeze(1) * difficulty)
    )
    return scale * torch.cos(torch.acos(cos) + margin)


def fbl_strengths(class_counts: Sequence[int] | Tensor) -> Tensor:
    """FBL's λ_c = (log n_max - log n_c) / (log n_max - log n_min): 0 for the most frequent class, 1 for
    the rarest. All zeros when every class has the same count (no imbalance, nothing to adjust)."""
    log_n = as_counts(class_counts).log()
    spread = log_n.max() - log_n.min()
    if spread == 0:
        return torch.zeros_like(log_n, dtype=torch.float32)
    return ((log_n.max() - log_n) / spread).float()


def fbl_logits(
    logits: Tensor, features: Tensor, strengths: Tensor, weight: float, curriculum: float | Tensor
) -> Tensor:
    """`logits - curriculum * weight * λ_c / (||f_i|| + 1e-12)` on every column; features are not detached."""
    norm = torch.linalg.vector_norm(at_least_float32(features), dim=1, keepdim=True)
    return at_least_float32(logits) - (curriculum * weight) * strengths.unsqueeze(0) / (norm + 1e-12)


def fbl_curriculum(epoch: int, epochs: int) -> float:
    """FBL's curriculum `(epoch / (epochs - 10)) ** 2`, epoch counted from 0.

    It is 1 at epoch `epochs - 10` and exceeds 1 for the last 9 epochs (1.097 at 199 of 200), as released.
    Runs of 10 epochs or fewer, where the formula has no meaning, use `epochs - 1` as the denominator
    (1 at the last epoch) instead.
    """
    if epochs < 1 or epoch < 0:
        raise ValueError(
            f"fbl_curriculum: need epochs >= 1 and epoch >= 0, got epoch={epoch}, epochs={epochs}"
        )
    ramp = epochs - 10 if epochs > 10 else max(epochs - 1, 1)
    return (epoch / ramp) ** 2


def drw_weights(class_counts: Sequence[int] | Tensor, beta: float = 0.9999) -> Tensor:
    """Class-balanced weights (1 - β) / (1 - β^n_c), normalised to sum to C. β = 0 gives all ones."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"drw_beta must be in [0, 1), got {beta}")
    n = as_counts(class_counts)
    w = (1.0 - beta) / (1.0 - beta**n)
    return (w * (n.numel() / w.sum())).float()


def log_prior(class_counts: Sequence[int] | Tensor) -> Tensor:
    """log p_c = log(n_c / N): Balanced Softmax / LogitAdjust (τ = 1) add it after scaling."""
    n = as_counts(class_counts)
    return (n / n.sum()).log().float()


def ldam_margins(class_counts: Sequence[int] | Tensor, max_margin: float = 0.5) -> Tensor:
    """LDAM margins `M * n_c^(-1/4) / max_j n_j^(-1/4)`: the rarest class gets `max_margin`."""
    m = as_counts(class_counts) ** -0.25
    return (max_margin * m / m.max()).float()
