"""What a model hands to a loss: one named tuple, the single seam between the model and every objective."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class ModelOutput(NamedTuple):
    """The model's outputs for one batch.

    features:   [N, d] penultimate pooled features (FBL uses their norm).
    logits:     [N, C] raw cosines (cosine head) or linear logits (linear head). For the 3-view BCL losses,
                the view-0 rows only.
    embeddings: BCL only: L2-normalised contrastive embeddings of views 1 then 2, [2N, e].
    centers:    BCL only: L2-normalised class centres head_fc(W^T), [C, e].
    """

    features: Tensor
    logits: Tensor
    embeddings: Tensor | None = None
    centers: Tensor | None = None


class ExpertOutput(NamedTuple):
    """A multi-expert model's outputs for one batch (NCL, spec/losses.md §4.5).

    A sibling of `ModelOutput` rather than two more optional fields on it: code that rebuilds a
    `ModelOutput` field by field (`ModelOutput(*(t.detach() for t in out))`) would trip over the Nones.
    The trainer reads only `logits` (training accuracy, evaluation), which means the same thing in both.

    features:        [N, K*d] the K experts' pooled features side by side.
    logits:          [N, C] the mean of the experts' raw outputs: what evaluation takes the argmax of.
    expert_logits:   [K, N, C] each expert's raw classifier output (raw cosines, or linear logits).
    contrast_logits: training only: per expert the MoCo similarities [q.k, q.queue] before the temperature,
                     [K, N, 1 + Q], against the queue as it was before this batch's keys were enqueued.
    """

    features: Tensor
    logits: Tensor
    expert_logits: Tensor
    contrast_logits: Tensor | None = None
