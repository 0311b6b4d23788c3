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
