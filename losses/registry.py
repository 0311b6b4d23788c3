"""Losses by name: `build_loss(cfg, class_counts)`; no if/elif chain anywhere."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from losses.bcl import BCL, DBMBCL
from losses.config import LossConfig
from losses.gml import DBMGML, GML
from losses.modules import BS, CE, CEDRW, DBMBS, DBMCE, DBMDRW, DBMLA, FBL, LA, LDAMDRW, CosineCE, Loss
from losses.ncl import DBMNCL, NCL, NCLLinear

LOSSES: dict[str, type[Loss]] = {
    cls.name: cls
    for cls in (
        *(CE, CEDRW, BS, LA, LDAMDRW, CosineCE, DBMCE, DBMDRW, DBMBS, DBMLA, FBL, BCL, DBMBCL),
        *(GML, DBMGML),
        *(NCL, NCLLinear, DBMNCL),
    )
}


def loss_names() -> list[str]:
    return list(LOSSES)


def loss_class(name: str) -> type[Loss]:
    """The class registered as `name` (its `head`, `num_views` and `model` are class attributes)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    return LOSSES[name]


def build_loss(cfg: LossConfig | str, class_counts: Sequence[int] | Tensor, **overrides: Any) -> Loss:
    """Loss `cfg.name` for the per-class training counts (indexed by label).

    `cfg` is the `[loss]` config, or a bare name for that loss with its defaults; keyword `overrides`
    replace config fields (`build_loss("dbm_ce", counts, scale=32.0)`)."""
    if isinstance(cfg, str):
        loss_class(cfg)  # the registry's message for an unknown name
        cfg = LossConfig(name=cfg, **overrides)
    elif overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return LOSSES[cfg.name](class_counts, cfg)
