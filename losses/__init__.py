"""fastlt losses: the cosine classifier, DBM, FBL, the re-balancing bases (CE, DRW, BS, LDAM), BCL, NCL, GML.

Imports only torch. Each function and part states its formula in its docstring. The contract with the model
and the loader: docs/ARCHITECTURE.md, "Seams and their contracts"; fidelity to the releases: docs/FIDELITY.md.
"""

from losses.bcl import balanced_contrastive
from losses.config import LossConfig
from losses.cross_entropy import TargetLogits, cross_entropy
from losses.functional import (
    class_margins,
    dbm_logits,
    drw_weights,
    fbl_curriculum,
    fbl_logits,
    fbl_strengths,
    ldam_margins,
    log_prior,
    margin_norm_gap,
)
from losses.heads import CosineClassifier
from losses.modules import Loss
from losses.output import ExpertOutput, ModelOutput
from losses.registry import LOSSES, build_loss, loss_class, loss_names

__all__ = [
    "LOSSES",
    "CosineClassifier",
    "ExpertOutput",
    "TargetLogits",
    "Loss",
    "LossConfig",
    "ModelOutput",
    "balanced_contrastive",
    "build_loss",
    "class_margins",
    "cross_entropy",
    "dbm_logits",
    "drw_weights",
    "fbl_curriculum",
    "fbl_logits",
    "fbl_strengths",
    "ldam_margins",
    "log_prior",
    "margin_norm_gap",
    "loss_class",
    "loss_names",
]
