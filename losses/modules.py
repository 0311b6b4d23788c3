"""The registered losses: each is one logit map + one objective (+ BCL's contrastive term), named once.

Every loss is an `nn.Module` with `forward(output: ModelOutput, target) -> 0-dim loss`, class attributes
`head` ("linear" or "cosine": the classifier it needs), `num_views` (augmented views per image it expects),
`view_recipe` (what its views 1.. get: "contrastive" or "classification", see `pipelines.make_loader`)
and `model` (the kind of model that feeds it: a key of trainer.models.MODELS), the attribute `distills`
(whether that model must run a teacher: GML's gml_alpha > 0, so set per instance), and `set_epoch(epoch,
epochs)`, called once per epoch before its steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import ClassVar

from torch import Tensor, nn

from losses import functional as LF
from losses.config import LossConfig
from losses.logit_maps import DBMargin, FeatureBalance, LDAMargin, LinearLogits, ScaledCosine
from losses.objectives import BalancedSoftmax, CrossEntropy, DeferredReweighting, LogitAdjustment
from losses.output import ModelOutput
from losses.parts import Part, require


class Loss(nn.Module):
    """A loss assembled from `parts` = (logit map, objective[, contrastive term]), each reading `cfg`."""

    name: ClassVar[str]
    head: ClassVar[str]
    num_views: ClassVar[int] = 1
    view_recipe: ClassVar[str] = "contrastive"  # views 1..: BCL's contrastive recipe (no effect with 1 view)
    model: ClassVar[str] = "classifier"  # a key of trainer.models.MODELS (GML's MoCo student: "gml_student")
    distills: bool = False  # the model must hand over a teacher's logits (GML with gml_alpha > 0)
    parts: ClassVar[tuple[type[Part], ...]]

    def __init__(self, class_counts: Sequence[int] | Tensor, cfg: LossConfig) -> None:
        super().__init__()
        counts = LF.as_counts(class_counts)
        self.num_classes = counts.numel()
        built = []
        for part in self.parts:
            try:
                built.append(part(counts, cfg))
            except ValueError as err:
                raise ValueError(f"loss {self.name!r}: {err}") from None
        self.logit_map, self.objective, *extra = built
        self.contrast = extra[0] if extra else None

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Update the epoch-dependent buffers in place; call once per epoch (0-indexed), before its steps."""
        require(
            isinstance(epoch, Integral) and isinstance(epochs, Integral) and epoch >= 0 and epochs >= 1,
            f"loss {self.name!r}: set_epoch needs ints epoch >= 0 and epochs >= 1, got {epoch}, {epochs}",
        )
        for part in self.children():
            part.set_epoch(int(epoch), int(epochs))

    def describe(self, class_counts: Sequence[int]) -> list[tuple[int, str]]:
        """What a run logs about this loss for its training counts: (logging level, line) pairs."""
        return [line for part in self.children() for line in part.describe(class_counts)]

    def forward(self, output: ModelOutput, target: Tensor) -> Tensor:
        logits = output.logits
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"loss {self.name!r} was built for {self.num_classes} classes and expects logits "
                f"[N, {self.num_classes}], got {tuple(logits.shape)}"
            )
        if target.shape != logits.shape[:1]:
            raise ValueError(
                f"loss {self.name!r}: target must be [N] = [{logits.shape[0]}] class indices, "
                f"got {tuple(target.shape)}"
            )
        loss = self.objective(self.logit_map(output, target), target)
        if self.contrast is not None:
            loss = self.contrast(loss, output, target)
        return loss

    def extra_repr(self) -> str:
        return f"name={self.name!r}, head={self.head!r}, num_classes={self.num_classes}"


class CE(Loss):
    """Plain cross-entropy on a linear classifier's logits."""

    name, head, parts = "ce", "linear", (LinearLogits, CrossEntropy)


class CEDRW(Loss):
    """CE with deferred class-balanced re-weighting."""

    name, head, parts = "ce_drw", "linear", (LinearLogits, DeferredReweighting)


class BS(Loss):
    """Balanced Softmax: CE(z + log p) on linear logits."""

    name, head, parts = "bs", "linear", (LinearLogits, BalancedSoftmax)


class LA(Loss):
    """Logit-adjusted CE(z + la_tau * log p) on linear logits (`bs` at la_tau = 1)."""

    name, head, parts = "la", "linear", (LinearLogits, LogitAdjustment)


class LDAMDRW(Loss):
    """LDAM margins on the cosine head, scaled by `ldam_scale`, with DRW."""

    name, head, parts = "ldam_drw", "cosine", (LDAMargin, DeferredReweighting)


class CosineCE(Loss):
    """Ablation: CE on `s * cos` (the cosine classifier without margins)."""

    name, head, parts = "cosine_ce", "cosine", (ScaledCosine, CrossEntropy)


class DBMCE(Loss):
    name, head, parts = "dbm_ce", "cosine", (DBMargin, CrossEntropy)


class DBMDRW(Loss):
    name, head, parts = "dbm_drw", "cosine", (DBMargin, DeferredReweighting)


class DBMBS(Loss):
    name, head, parts = "dbm_bs", "cosine", (DBMargin, BalancedSoftmax)


class DBMLA(Loss):
    """DBM logits, then the logit adjustment: `dbm_bs` at la_tau = 1."""

    name, head, parts = "dbm_la", "cosine", (DBMargin, LogitAdjustment)


class FBL(Loss):
    """Feature-Balanced Loss on a linear classifier."""

    name, head, parts = "fbl", "linear", (FeatureBalance, CrossEntropy)
