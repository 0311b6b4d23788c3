"""Balanced Contrastive Learning (BCL, CVPR 2022): BalSCL on views 1-2 plus the class centres.

`bcl` and `dbm_bcl` take 3 views: `output.logits` holds view 0's raw cosines [B, C] (LogitAdjust CE on
s*cos or on DBM logits), `output.embeddings` the normalised embeddings of views 1 then 2 [2B, e],
`output.centers` the normalised class centres [C, e]. Total: bcl_alpha * L_CE + bcl_beta * L_SCL.
Under DDP BalSCL contrasts over the global batch (`losses.distributed`), as the release did on
DataParallel's gathered outputs; the CE term stays a per-rank mean, which DDP's averaging makes global.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from losses.config import LossConfig
from losses.distributed import batch_group, gather_rows, gather_values, rank_and_size
from losses.functional import at_least_float32
from losses.logit_maps import DBMargin, ScaledCosine
from losses.modules import Loss
from losses.objectives import BalancedSoftmax
from losses.output import ModelOutput
from losses.parts import Part, require


def balanced_contrastive(
    embeddings: Tensor,
    centers: Tensor,
    target: Tensor,
    temperature: float,
    group: dist.ProcessGroup | None = None,
) -> Tensor:
    """BalSCL: supervised contrast of the 2B anchors against [anchors; centres], class-averaged denominator.

    For anchor i of class k: positives P(i) = every other anchor of class k and centre k; the denominator
    D_i = sum_{j != i} exp(S_ij) / (cnt[label j] - [label j == k]), with cnt = anchors per class in the
    batch + 1 (the centre). Loss = mean_i [log D_i - mean_{j in P(i)} S_ij], S = A Q^T / T minus its
    detached row max (the loss does not depend on that shift; it only keeps exp in range).

    `group`: the process group the batch is split over (None: this process holds the whole batch). Then
    this rank's 2b anchors (`embeddings`, its view-1 rows then its view-2 rows) are contrasted against
    every rank's anchors (gathered with gradient) plus the centres, and `cnt` counts the global batch.
    Each rank returns the mean over its own anchors, so the mean of the ranks' values is the one-process
    loss on the whole batch (equal local batch sizes, as the samplers guarantee). BalSCL does not depend on
    the anchors' order, so the gathered rank-major order gives the same loss as [v1; v2].
    """
    num_classes, two_b = centers.shape[0], embeddings.shape[0]
    anchors = at_least_float32(embeddings)
    anchor_labels = target.repeat(2)
    if group is None:
        keys, key_labels, first = anchors, anchor_labels, 0
    else:
        keys = gather_rows(anchors, group)
        key_labels = gather_values(anchor_labels, group)
        first = rank_and_size(group)[0] * two_b  # this rank's anchors are keys[first : first + 2b]
    labels = torch.cat([key_labels, torch.arange(num_classes, device=target.device)])
    count = anchors.new_ones(num_classes).index_add(0, key_labels, anchors.new_ones(key_labels.shape[0]))
    with torch.autocast(anchors.device.type, enabled=False):  # similarities / T in full precision
        sim = anchors @ torch.cat([keys, centers.to(anchors.dtype)]).T / temperature  # [2b, K + C]
    sim = sim - sim.amax(dim=1, keepdim=True).detach()
    columns = torch.arange(sim.shape[1], device=sim.device)
    own = torch.arange(first, first + two_b, device=sim.device)
    not_self = columns.unsqueeze(0) != own.unsqueeze(1)
    positive = (anchor_labels.unsqueeze(1) == labels.unsqueeze(0)) & not_self
    per_class = count[labels].unsqueeze(0) - positive.to(anchors.dtype)
    denominator = torch.where(not_self, sim.exp() / per_class, 0.0).sum(dim=1)
    mean_positive = (sim * positive).sum(dim=1) / positive.sum(dim=1)
    return (denominator.log() - mean_positive).mean()


class BalancedContrastive(Part):
    """Adds BalSCL to the classification loss: bcl_alpha * ce + bcl_beta * BalSCL."""

    uses = ("bcl_alpha", "bcl_beta", "bcl_temperature")

    def __init__(self, class_counts: Tensor, cfg: LossConfig) -> None:
        super().__init__(class_counts, cfg)
        self.num_classes = class_counts.numel()

    def forward(self, ce: Tensor, output: ModelOutput, target: Tensor) -> Tensor:
        embeddings, centers = output.embeddings, output.centers
        require(
            embeddings is not None and centers is not None,
            "bcl: the output must carry embeddings (views 1-2) and centers",
        )
        assert embeddings is not None and centers is not None  # for type checkers
        require(
            embeddings.ndim == 2 and embeddings.shape[0] == 2 * target.shape[0],
            f"bcl: embeddings must be [2B, e] = [{2 * target.shape[0]}, e] (views 1 then 2), "
            f"got {tuple(embeddings.shape)}",
        )
        require(
            centers.shape == (self.num_classes, embeddings.shape[1]),
            f"bcl: centers must be [C, e] = [{self.num_classes}, {embeddings.shape[1]}], "
            f"got {tuple(centers.shape)}",
        )
        # Under DDP the contrast spans the global batch (all ranks' anchors and class counts).
        scl = balanced_contrastive(embeddings, centers, target, self.bcl_temperature, batch_group())
        return self.bcl_alpha * ce + self.bcl_beta * scl


class BCL(Loss):
    """BCL: LogitAdjust CE on view 0's s*cos + BalSCL."""

    name, head, num_views, parts = "bcl", "cosine", 3, (ScaledCosine, BalancedSoftmax, BalancedContrastive)


class DBMBCL(Loss):
    """DBM-BCL: LogitAdjust CE on view 0's DBM logits + BalSCL (DBM enters only the classification branch)."""

    name, head, num_views, parts = "dbm_bcl", "cosine", 3, (DBMargin, BalancedSoftmax, BalancedContrastive)
