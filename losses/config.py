"""`LossConfig`: the `[loss]` section of a recipe, the only place loss hyper-parameter defaults are written.

Every registered loss reads the fields it uses from this one object (`build_loss(cfg, class_counts)`), so a
default lives here and nowhere else. Fields are flat and prefixed by the piece that reads them (`drw_`,
`bcl_`, `ldam_`, `fbl_`, `gml_`, `ncl_`): the recipes' `[loss]` tables stay one level deep.

Values are checked when the object is built (a recipe load, or `build_loss("dbm_ce", counts, scale=32.0)`):
an unknown loss name lists the valid ones, an out-of-range value names its key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import get_args

from losses.functional import MarginNorm


@dataclass(frozen=True)
class LossConfig:
    name: str = "ce"  # a key of losses.LOSSES
    scale: float = 30.0  # s of the cosine classifier (32 on CIFAR)
    max_margin: float = 0.1  # DBM's K: the rarest class's margin
    tau: float = 1.0  # DBM's margin exponent: m_c = K * (n_ref / n_c) ** tau
    la_tau: float = 1.0  # the logit adjustment's weight on log p (`la`, `dbm_la`; 1 = Balanced Softmax)
    lambda_inst: float = 1.0
    # "min": n_ref = n_min, as the paper writes it; "last": the released code's count of the last label.
    margin_norm: MarginNorm = "min"
    detach_difficulty: bool = False
    drw_epoch: int = 160  # 0-indexed epoch DRW switches on (160 of 200 as released)
    drw_fraction: float = 0.0  # > 0: DRW starts at this fraction of the run instead of drw_epoch
    drw_beta: float = 0.9999
    fbl_weight: float = 150.0  # FBL's A (60 on CIFAR)
    ldam_max_margin: float = 0.5
    ldam_scale: float = 30.0
    bcl_alpha: float = 2.0
    bcl_beta: float = 0.6
    bcl_temperature: float = 0.1
    # GML / DBM-GML (losses/gml.py): gml_gamma * supervised + gml_beta * (con + con_T) + gml_alpha * KD.
    gml_alpha: float = 1.0  # distillation weight (1 on CIFAR as released; 0 on ImageNet: no KD)
    gml_beta: float = 1.0  # queue-contrast weight
    gml_gamma: float = 1.0  # supervised-term weight
    gml_kd_temperature: float = 4.0
    ncl_hcm_n: int = 30  # NCL's hard-category mask keeps the top-k columns (CIFAR-100 30, CIFAR-10 3)
    ncl_diversity: float = 0.6  # NBOD's factor
    ncl_contrast_weight: float = 1.0  # weight of the experts' summed InfoNCE
    ncl_temperature: float = 0.2  # InfoNCE's T

    def __post_init__(self) -> None:
        # Imported here: the registry imports the losses, whose parts read this class (a check, not a use).
        from losses.registry import LOSSES

        if self.name not in LOSSES:
            raise ValueError(f"loss.name: unknown loss {self.name!r}; valid: {', '.join(LOSSES)}")
        if self.margin_norm not in get_args(MarginNorm):
            choices = ", ".join(get_args(MarginNorm))
            raise ValueError(f"loss.margin_norm: must be one of {choices}; got {self.margin_norm!r}")
        for key, ok, rule in (
            ("scale", self.scale > 0, "> 0"),
            ("max_margin", self.max_margin >= 0, ">= 0"),
            ("tau", self.tau >= 0, ">= 0"),
            ("la_tau", 0 <= self.la_tau < math.inf, "a finite number >= 0"),
            ("lambda_inst", self.lambda_inst >= 0, ">= 0"),
            ("drw_epoch", self.drw_epoch >= 0, ">= 0"),
            ("drw_fraction", 0 <= self.drw_fraction <= 1, "in [0, 1] (0: use drw_epoch)"),
            ("drw_beta", 0 <= self.drw_beta < 1, "in [0, 1)"),
            ("fbl_weight", self.fbl_weight >= 0, ">= 0"),
            ("ldam_max_margin", self.ldam_max_margin >= 0, ">= 0"),
            ("ldam_scale", self.ldam_scale > 0, "> 0"),
            ("bcl_alpha", self.bcl_alpha >= 0, ">= 0"),
            ("bcl_beta", self.bcl_beta >= 0, ">= 0"),
            ("bcl_temperature", self.bcl_temperature > 0, "> 0"),
            ("gml_alpha", 0 <= self.gml_alpha < math.inf, "a finite number >= 0"),
            ("gml_beta", 0 <= self.gml_beta < math.inf, "a finite number >= 0"),
            ("gml_gamma", 0 <= self.gml_gamma < math.inf, "a finite number >= 0"),
            ("gml_kd_temperature", 0 < self.gml_kd_temperature < math.inf, "a finite number > 0"),
            ("ncl_hcm_n", self.ncl_hcm_n >= 1, ">= 1"),
            ("ncl_diversity", self.ncl_diversity >= 0, ">= 0"),
            ("ncl_contrast_weight", self.ncl_contrast_weight >= 0, ">= 0"),
            ("ncl_temperature", self.ncl_temperature > 0, "> 0"),
        ):
            if not ok:  # NaN fails every comparison, so it is refused too
                raise ValueError(f"loss.{key}: must be {rule}, got {getattr(self, key)!r}")
