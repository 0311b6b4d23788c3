"""GML (Gaussian-mixture likelihood, ICML 2023) and DBM-GML: a supervised term, a contrast against a
class-balanced queue, and knowledge distillation from a frozen teacher.

The released `GMLLoss` (quotation2520/dbm_ltr `GML/losses.py`), fed a `MoCoOutput` by the MoCo student of
trainer/gml_model.py. Supervised: `CE(s·cos + log p)` with s = 1/T_s = 30 (`gml`), or DBM-BS (`dbm_gml`,
the DBM paper's one change); contrast: `gml_contrast`; distillation: `distill_kl` at T = 4 between the raw
scaled cosines of student and teacher. Total: `gml_gamma·sup + gml_beta·(con + con_T) + gml_alpha·KD`;
the release uses α = β = γ = 1 on CIFAR-100-LT and α = 0 (no distillation) on ImageNet-LT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from losses import functional as LF
from losses.config import LossConfig
from losses.cross_entropy import cross_entropy
from losses.functional import at_least_float32
from losses.logit_maps import DBMargin, ScaledCosine
from losses.modules import Loss
from losses.objectives import BalancedSoftmax
from losses.output import MoCoOutput
from losses.parts import Part, require


def _segment_sum(x: Tensor, sizes: Tensor) -> Tensor:
    """Row-wise sums over consecutive column segments of the given sizes: [N, K] -> [N, C].

    `unsafe=True` skips the op's check that the sizes add up to K, which reads them on the host (a sync);
    the queue guarantees it. One pass over [N, K] (a one-hot [K, C] matrix product, as released, would cost
    K·C memory: 2 GB for a 65k-key iNaturalist queue).
    """
    lengths = sizes.expand(x.shape[0], sizes.shape[0])
    return torch.segment_reduce(x, "sum", lengths=lengths, axis=1, unsafe=True)


def class_log_mean_exp(logits: Tensor, sizes: Tensor, weights: Tensor | None = None) -> Tensor:
    """`log( Σ_{k∈c} w_nk·exp(l_nk) / Σ_{k∈c} w_nk )` per row n and class c, [N, C].

    The K columns of `logits` are grouped by class in label order, class c owning `sizes[c]` consecutive
    columns. `weights` (0/1, [N, K]) leave columns out; None counts every column. Shifted by the detached
    row maximum over all K columns, as released (the value does not depend on the shift).
    """
    shift = logits.amax(dim=1, keepdim=True).detach()
    exp = (logits - shift).exp()
    if weights is None:
        mean = _segment_sum(exp, sizes) / sizes.to(exp.dtype)
    else:
        w = weights.to(exp.dtype)
        mean = _segment_sum(exp * w, sizes) / _segment_sum(w, sizes)
    return mean.log() + shift


def gml_contrast(
    similarities: Tensor,
    sizes: Tensor,
    own_keys: Tensor,
    temperature: Tensor,
    target: Tensor,
    log_prior: Tensor,
) -> tuple[Tensor, Tensor]:
    """GML's contrast terms `(con, con_T)`, both `CE(LME(S/T_c) + log p, y)` with the released gradient split:
    `con` sees T_c detached and every key; `con_T` sees the similarities detached and no key of the
    query's own image (`own_keys`)."""
    s = at_least_float32(similarities)
    t = temperature.to(s.dtype)
    con = cross_entropy(class_log_mean_exp(s / t.detach(), sizes), target, prior=log_prior)
    con_t = cross_entropy(class_log_mean_exp(s.detach() / t, sizes, ~own_keys), target, prior=log_prior)
    return con, con_t


def distill_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """The released `DistillKL`: `T² · Σ KL(softmax(teacher/T) || softmax(student/T)) / N`; no gradient
    reaches the teacher."""
    log_p = F.log_softmax(at_least_float32(student) / temperature, dim=1)
    q = F.softmax(at_least_float32(teacher).detach() / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="sum") * temperature**2 / student.shape[0]


class GMLTerms(Part):
    """Adds GML's contrast and distillation to the supervised term (see the module docstring).

    `scale` is the supervised term's s = 1/T_s: distillation compares the raw cosines scaled by it."""

    uses = ("scale", "gml_alpha", "gml_beta", "gml_gamma", "gml_kd_temperature")

    def __init__(self, class_counts: Tensor, cfg: LossConfig) -> None:
        super().__init__(class_counts, cfg)
        self.num_classes = class_counts.numel()
        self.register_buffer("log_prior", LF.log_prior(class_counts), persistent=False)

    def _check(self, output: MoCoOutput, n: int) -> None:
        require(
            isinstance(output, MoCoOutput),
            f"gml: the model must return a MoCoOutput (trainer/gml_model.py), got {type(output).__name__}",
        )
        sims, own = output.queue_similarities, output.own_keys
        require(
            sims.ndim == 2 and sims.shape[0] == n and own.shape == sims.shape and own.dtype == torch.bool,
            f"gml: queue_similarities must be [N, K] with N = {n} and own_keys a bool tensor of the same "
            f"shape, got {tuple(sims.shape)} and {tuple(own.shape)} {own.dtype}",
        )
        require(
            output.queue_sizes.shape == (self.num_classes,) and output.temperature.ndim == 0,
            f"gml: queue_sizes must be [{self.num_classes}] and temperature 0-dim, got "
            f"{tuple(output.queue_sizes.shape)} and {tuple(output.temperature.shape)}",
        )
        teacher = output.teacher_logits
        require(
            self.gml_alpha == 0 or (teacher is not None and teacher.shape == output.logits.shape),
            f"gml: gml_alpha = {self.gml_alpha} distils, so teacher_logits must be [N, C] like the logits "
            f"(build the student with distill=True)",
        )

    def forward(self, supervised: Tensor, output: MoCoOutput, target: Tensor) -> Tensor:
        self._check(output, target.shape[0])
        loss = self.gml_gamma * supervised
        if self.gml_beta > 0:
            con, con_t = gml_contrast(
                output.queue_similarities,
                output.queue_sizes,
                output.own_keys,
                output.temperature,
                target,
                self.log_prior,
            )
            loss = loss + self.gml_beta * (con + con_t)
        if self.gml_alpha > 0:
            assert output.teacher_logits is not None  # checked above; for type checkers
            kd = distill_kl(
                self.scale * at_least_float32(output.logits),
                self.scale * at_least_float32(output.teacher_logits),
                self.gml_kd_temperature,
            )
            loss = loss + self.gml_alpha * kd
        return loss


class GML(Loss):
    """GML as released: CE(s·cos + log p) + contrast over the class-balanced queue + distillation.

    Its model is the MoCo student of trainer/gml_model.py (`model = "gml_student"`), fed three views of
    each image (cls, q, k)."""

    name, head, num_views, parts = "gml", "cosine", 3, (ScaledCosine, BalancedSoftmax, GMLTerms)
    view_recipe: ClassVar[str] = "classification"  # q and k: the cls view's crop, flip and policy
    model: ClassVar[str] = "gml_student"

    def __init__(self, class_counts: Sequence[int] | Tensor, cfg: LossConfig) -> None:
        super().__init__(class_counts, cfg)
        self.distills = cfg.gml_alpha > 0  # the student runs the teacher on the cls view only then


class DBMGML(GML):
    """DBM-GML: GML with DBM-BS as its supervised term (DBM logits on the student's cosines, s = 30)."""

    name, parts = "dbm_gml", (DBMargin, BalancedSoftmax, GMLTerms)
