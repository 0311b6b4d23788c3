"""Losses by name: `build_loss(name, class_counts, **hparams)`; no if/elif chain anywhere."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from losses.bcl import BCL, DBMBCL
from losses.modules import BS, CE, CEDRW, DBMBS, DBMCE, DBMDRW, FBL, LDAMDRW, CosineCE, Loss

LOSSES: dict[str, type[Loss]] = {
    cls.name: cls for cls in (CE, CEDRW, BS, LDAMDRW, CosineCE, DBMCE, DBMDRW, DBMBS, FBL, BCL, DBMBCL)
}


def loss_names() -> list[str]:
    return list(LOSSES)


def loss_class(name: str) -> type[Loss]:
    """The class registered as `name` (its `head` and `num_views` are class attributes)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    return LOSSES[name]


def loss_params(name: str) -> dict[str, Any]:
    """The hyper-parameters loss `name` accepts, with their defaults."""
    return loss_class(name).params()


def build_loss(name: str, class_counts: Sequence[int] | Tensor, **hparams: Any) -> Loss:
    """Build loss `name` for the given per-class training counts (indexed by label)."""
    return loss_class(name)(class_counts, **hparams)
