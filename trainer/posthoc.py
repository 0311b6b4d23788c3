"""Post-hoc adjustments of a trained classifier's predictions: logit adjustment and tau-normalisation.

Logit adjustment (Menon et al., ICLR 2021): argmax_c (s * z_c - tau * log p_c), z the logits (raw cosines
for a cosine head, s its scale; s = 1 for a linear head), p the training prior. Tau-normalisation (Kang et
al., ICLR 2020): w_c -> w_c / ||w_c||^tau, bias dropped, as the release does; a cosine head still normalises
the features, so tau = 1 is its plain prediction. Both are pure functions of a forward's outputs and the
classifier's weights, computed on the device beside the plain argmax (`eval_views`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losses import CosineClassifier, log_prior
from trainer.config import ConfigError, EvalConfig
from trainer.step import unwrap

View = Callable[[Any], Tensor]  # a model output -> the logits whose argmax is this view's prediction
VIEWS = ("la", "tau_norm")  # the names evaluation reports them under (`la_top1`, `tau_norm_few`, ...)
GROUPS = ("top1", "many", "medium", "few")


def logit_adjusted(logits: Tensor, log_p: Tensor, tau: float, scale: float = 1.0) -> Tensor:
    """`scale * logits - tau * log_p`, [N, C] in float32 (or wider)."""
    z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    return scale * z - tau * log_p.to(z.dtype)


def tau_normalised(features: Tensor, weight: Tensor, tau: float, head: str) -> Tensor:
    """Logits of the tau-normalised classifier, [N, C]. `weight` is the head's own layout: nn.Linear's
    [C, d] ("linear": features @ (w_c / ||w_c||^tau), no bias) or the cosine head's [d, C] ("cosine":
    normalize(features) @ (w_c / ||w_c||^tau))."""
    f, w = features.float(), weight.float()
    if head == "cosine":
        return F.normalize(f, dim=1) @ (w / w.norm(dim=0, keepdim=True).pow(tau))
    return f @ (w / w.norm(dim=1, keepdim=True).pow(tau)).t()


def head_of(module: nn.Module) -> tuple[str, nn.Module] | None:
    """("linear" | "cosine", the classifier) of a model whose features feed one classifier, else None."""
    classifier = getattr(module, "classifier", None)
    if isinstance(classifier, CosineClassifier):
        return "cosine", classifier
    if isinstance(classifier, nn.Linear):
        return "linear", classifier
    return None


def logit_scale(loss: nn.Module) -> float:
    """The factor the loss applies to the model's logits before its softmax: DBM's / the cosine loss's s,
    LDAM's scale, 1 for linear logits."""
    logit_map = getattr(loss, "logit_map", None)
    return float(getattr(logit_map, "scale", getattr(logit_map, "ldam_scale", 1.0)))


def eval_views(
    cfg: EvalConfig, module: nn.Module, loss: nn.Module, class_counts: Sequence[int]
) -> dict[str, View]:
    """The adjusted predictions `cfg` asks for, as functions of a model output (for `EvalStep(views=...)`);
    a ConfigError naming the key when the model cannot give one (tau-norm needs one linear or cosine head)."""
    views: dict[str, View] = {}
    module = unwrap(module)
    device = next(module.parameters()).device
    if cfg.la_tau > 0:
        log_p, scale, tau = log_prior(class_counts).to(device), logit_scale(loss), cfg.la_tau
        views["la"] = lambda output: logit_adjusted(output.logits, log_p, tau, scale)
    if cfg.tau_norm > 0:
        found = head_of(module)
        if found is None:
            raise ConfigError(
                f"eval.tau_norm: the {type(module).__name__} model (loss {getattr(loss, 'name', '?')}) has "
                "no single linear or cosine classifier on its features to normalise; set eval.tau_norm=0"
            )
        head, classifier = found
        tau = cfg.tau_norm
        views["tau_norm"] = lambda output: tau_normalised(output.features, classifier.weight, tau, head)
    return views


def flat(report: dict[str, Any]) -> dict[str, Any]:
    """An evaluation report's adjusted groups as metrics-record keys: {"la_top1": .., "tau_norm_few": ..}."""
    return {f"{v}_{g}": report[v][g] for v in VIEWS if isinstance(report.get(v), dict) for g in GROUPS}


def nested(report: dict[str, Any]) -> dict[str, Any]:
    """An evaluation report's adjusted groups as results.json keys: {"la": {"top1": .., ...}, ...}."""
    return {v: {g: report[v][g] for g in GROUPS} for v in VIEWS if isinstance(report.get(v), dict)}
