"""Cross-entropy, also over logits whose target column alone was changed (DBM, LDAM), without building them.

DBM's and LDAM's margins touch one column per row. Merging that column into the [N, C] matrix and calling
`F.cross_entropy` costs an extra write and read of the matrix, and a compiler cannot always fuse it away;
`cross_entropy(TargetLogits(others, z_y), ...)` reads `others` in the same passes as plain cross-entropy.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class TargetLogits(NamedTuple):
    """Logits [N, C] that are `others` everywhere except column y_i of row i, which holds `target[i]`.

    DBM and LDAM change only the target column. Kept apart, `cross_entropy` reads the [N, C] part in the
    same passes as plain cross-entropy does, and never writes the merged matrix.
    """

    others: Tensor
    target: Tensor

    def dense(self, target: Tensor) -> Tensor:
        return torch.where(one_hot_mask(target, self.others.shape[1]), self.target.unsqueeze(1), self.others)


def one_hot_mask(target: Tensor, num_classes: int) -> Tensor:
    return target.unsqueeze(1) == torch.arange(num_classes, device=target.device)


def target_column(x: Tensor, target: Tensor) -> Tensor:
    """x[i, y_i] as a masked row sum rather than a gather: the backward is then a pointwise mask that the
    compiler fuses into the loss gradient, instead of a scatter into a zeroed [N, C] buffer."""
    return torch.where(one_hot_mask(target, x.shape[1]), x, 0.0).sum(dim=1)


def cross_entropy(
    logits: Tensor | TargetLogits, target: Tensor, prior: Tensor | None = None, weight: Tensor | None = None
) -> Tensor:
    """Mean cross-entropy of `logits + prior`, class-weighted like `F.cross_entropy(weight=...)` (the batch's
    weight sum as denominator). For `TargetLogits` it equals `cross_entropy(logits.dense(target), ...)`."""
    if isinstance(logits, Tensor):
        logits = logits if prior is None else logits + prior
        return F.cross_entropy(logits, target, weight=None if weight is None else weight.to(logits.dtype))
    others, z_y = logits
    if prior is not None:
        others, z_y = others + prior, z_y + prior[target]
    onehot = one_hot_mask(target, others.shape[1])
    # log-sum-exp of the merged row, shifted by its maximum (exact for any shift; this one keeps every exp
    # <= 1 and one of them = 1): one pass for the maximum, one for the sum, as F.cross_entropy does.
    shift = torch.maximum(torch.where(onehot, -math.inf, others).amax(dim=1), z_y).detach()
    total = torch.where(onehot, 0.0, (others - shift.unsqueeze(1)).exp()).sum(dim=1) + (z_y - shift).exp()
    per_sample = total.log() + shift - z_y
    if weight is None:
        return per_sample.mean()
    w = weight.to(per_sample.dtype)[target]
    return (w * per_sample).sum() / w.sum()
