"""The base of the pieces every registered loss is assembled from.

A *logit map* (`logit_maps.py`) turns the model's output into the logits the objective sees; an *objective*
(`objectives.py`) turns logits into a loss. Each piece declares its hyper-parameters as keyword-only
arguments with defaults: `loss_params` reads them from the signatures, so a default is written in one place.

Epoch-dependent state (DRW's weights, FBL's curriculum) lives in buffers that `set_epoch` overwrites in
place: a compiled or CUDA-graph-captured step reads the new values without seeing a changed Python object,
so it neither recompiles nor goes stale. Buffers are not persistent: they derive from the class counts and
the epoch, which the trainer restores. Every piece computes in float32 whatever the logits' dtype.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


class Part(nn.Module):
    """Base of all pieces: hyper-parameters from the keyword-only arguments of `__init__`."""

    @classmethod
    def params(cls) -> dict[str, Any]:
        signature = inspect.signature(cls.__init__)
        return {p.name: p.default for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY}

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Stateless pieces ignore the epoch."""

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self.params())
