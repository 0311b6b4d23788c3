"""What a model hands to a loss (`ModelOutput`, or GML's `MoCoOutput`, NCL's `ExpertOutput`): the one seam
between a model and every objective."""

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


class MoCoOutput(NamedTuple):
    """What the GML student (trainer/gml_model.py) hands to the `gml` / `dbm_gml` losses in training.

    A separate tuple rather than more optional fields on `ModelOutput`: code that walks every field of a
    `ModelOutput` (the loss tests, the loss benchmark) stays valid. The first two fields mean the same as
    there, so the step's metrics read `logits` from either.

    features:           [N, d] the student's pooled features of the classification view.
    logits:             [N, C] its raw cosines (the supervised term scales them).
    queue_similarities: [N, K] cosine between each query embedding and each embedded queue key, taken after
                        this batch's keys entered the queue (as released: a query's own key is in the queue).
    queue_sizes:        [C] int64: the queue is grouped by class in label order, class c owning this many
                        consecutive slots.
    own_keys:           [N, K] bool: slot k holds the key of query n's own image (left out of the temperature
                        term's class means, as released).
    temperature:        0-dim: the learnable contrast temperature T_c.
    teacher_logits:     [N, C] the frozen teacher's raw cosines of the same view (None when not distilling).
    """

    features: Tensor
    logits: Tensor
    queue_similarities: Tensor
    queue_sizes: Tensor
    own_keys: Tensor
    temperature: Tensor
    teacher_logits: Tensor | None = None


class ExpertOutput(NamedTuple):
    """A multi-expert model's outputs for one batch (NCL).

    A sibling of `ModelOutput` rather than two more optional fields on it, for the same reason as
    `MoCoOutput`. The trainer reads only `logits` (training accuracy, evaluation), which means the same
    thing in all three.

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
