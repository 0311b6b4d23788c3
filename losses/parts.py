"""The base of the pieces every registered loss is assembled from.

A *logit map* (`logit_maps.py`) turns the model's output into logits; an *objective* (`objectives.py`)
turns logits into a loss. Each piece names the `LossConfig` fields it reads (`uses`).
Epoch state (DRW's weights, FBL's curriculum) lives in non-persistent buffers that `set_epoch` overwrites
in place, so a compiled or captured step reads new values without recompiling or going stale; the trainer
restores them from the class counts and the epoch. Every piece computes in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor, nn

from losses.config import LossConfig


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


class Part(nn.Module):
    """Base of all pieces: copies the `uses` fields of the config onto the instance."""

    uses: ClassVar[tuple[str, ...]] = ()

    def __init__(self, class_counts: Tensor, cfg: LossConfig) -> None:
        super().__init__()
        for key in self.uses:
            setattr(self, key, getattr(cfg, key))

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Stateless pieces ignore the epoch."""

    def describe(self, class_counts: Sequence[int]) -> list[tuple[int, str]]:
        """What a run should log about this piece for these counts: (logging level, line) pairs."""
        return []

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self.uses)
