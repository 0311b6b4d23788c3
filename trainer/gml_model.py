"""GML's MoCo student (model kind "gml_student"): a cosine classifier whose key encoder is a frozen teacher,
and a class-balanced queue of the teacher's features (quotation2520/dbm_ltr GML/moco/builder.py with
`set_distiller`).

`build` makes it for a loss from `[model]` (`teacher`, `teacher_arch`, `gml_*`); `SHAPE_KEYS` are the keys
a resumed run may not change. Invariant: nothing in the step reads a tensor on the host (the queue, its
pointers and the step counter are device buffers updated in place), and under DDP every rank enqueues every
rank's keys, so those buffers are identical on all ranks by construction (`RANK_IDENTICAL_BUFFERS`:
launch.build keeps them out of DDP's per-forward broadcast, 128 MB a step on ImageNet-LT).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losses import Loss
from losses.distributed import batch_group, gather_values, rank_and_size
from losses.functional import as_counts
from losses.output import MoCoOutput, ModelOutput
from trainer.classifier import build_classifier, mlp
from trainer.config import ConfigError, ModelConfig
from trainer.teacher import load_teacher, record_of

# the queue's layout and the heads' size, and the teacher (a resumed student keeps the one it holds)
SHAPE_KEYS = ("gml_queue_size", "gml_base_k", "gml_embed_dim", "teacher", "teacher_arch")


def queue_layout(class_counts: Sequence[int] | Tensor, size: int, base: int) -> tuple[Tensor, Tensor]:
    """(first slot, number of slots) per class, int64 [C]: `base` slots each, the other `size - C*base`
    shared in proportion to the class prior, boundaries rounded up (`set_cls_weight` as released, computed
    in float64; the last boundary is clipped to `size`)."""
    n = as_counts(class_counts)
    c = n.numel()
    if size < c * base:  # the one check that the queue fits the classes (ModelConfig checks the ranges)
        raise ConfigError(
            f"model.gml_queue_size={size}: the queue needs model.gml_base_k={base} slots for each of the "
            f"data's {c} classes, at least {c * base}"
        )
    position = torch.arange(1, c + 1, dtype=torch.float64) * base + (size - c * base) * n.cumsum(0) / n.sum()
    ends = position.ceil().long().clamp_max(size)
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    return starts, ends - starts


class ClassBalancedQueue(nn.Module):
    """`size` keys grouped by class in label order; each class's slots form a ring with its own pointer.

    A batch's keys of class c go, in batch order, to the slots after c's pointer; keys beyond the class's
    room are dropped (the first ones are kept, as released). Dropped keys are written to one spare row past
    the end, so the update is a fixed-shape `index_copy_` with no host-side masking. `ids` identifies the
    image behind each key (negative for the initial random keys).
    """

    RANK_IDENTICAL_BUFFERS = ("keys", "ids", "pointers")  # every rank pushes the same gathered keys

    def __init__(self, class_counts: Sequence[int] | Tensor, size: int, base: int, dim: int) -> None:
        super().__init__()
        starts, sizes = queue_layout(class_counts, size, base)
        self.size, self.num_classes = size, sizes.numel()
        self.register_buffer("starts", starts, persistent=False)  # derived from the counts
        self.register_buffer("sizes", sizes, persistent=False)
        # As released: random unit keys and ids -K..-1 until real keys arrive; + the spare row.
        keys = torch.cat([F.normalize(torch.randn(size, dim), dim=1), torch.zeros(1, dim)])
        self.register_buffer("keys", keys)
        self.register_buffer("ids", torch.arange(-size - 1, 0).roll(-1))  # -K..-1, spare row -K-1
        self.register_buffer("pointers", torch.zeros(self.num_classes, dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: Tensor, labels: Tensor, ids: Tensor) -> None:
        """Enqueue a batch in place: keys [B, d], labels [B], ids [B]."""
        hit = labels.unsqueeze(1) == torch.arange(self.num_classes, device=labels.device)  # [B, C]
        rank = (hit.cumsum(0) - 1).gather(1, labels.unsqueeze(1)).squeeze(1)  # earlier keys of its class
        room = self.sizes[labels]
        slot = self.starts[labels] + (self.pointers[labels] + rank) % room
        slot = torch.where(rank < room, slot, self.size)  # past the class's room: the spare row
        self.keys.index_copy_(0, slot, keys.to(self.keys.dtype))
        self.ids.index_copy_(0, slot, ids)
        self.pointers.copy_((self.pointers + torch.minimum(hit.sum(0), self.sizes)) % self.sizes)

    def extra_repr(self) -> str:
        return f"size={self.size}, classes={self.num_classes}, dim={self.keys.shape[1]}"


class GMLStudent(nn.Module):
    """The MoCo student: `student` (normalize -> body -> cosine classifier, returning `ModelOutput`), a query
    projection, a trainable key projection over the frozen `teacher`'s features, the queue and T_c.

    `teacher` maps the same uint8 images to a `ModelOutput` (features [N, d_t], logits [N, C]); it is frozen
    here and stays in eval mode whatever `train()` says. `distill`: also run the teacher on the cls view
    for the distillation logits (the loss's gml_alpha > 0).

    Training batches stack three views of each image, view-major: [cls; q; k] ([3N, 3, H, W], uint8). The
    student encodes [cls; q] in one pass (BatchNorm statistics over both, as released), classifies cls and
    projects q to a query; the teacher encodes k into a key (and cls into distillation logits). The keys
    enter the queue, then the whole queue is projected by the trainable key head and compared with the
    queries: a query's own key is among them, as released. Evaluation is the student alone: one view, raw
    cosines. BatchNorm's running statistics, which differ per rank, are still broadcast from rank 0.

    Each key carries an id, `step * global batch + position`, so that the loss's temperature term can leave
    out a query's own key. Deviations from the release: docs/FIDELITY.md, "GML". BatchNorm is per rank
    unless `model.sync_bn` (the release's large-scale runs use SyncBN, as the large-scale recipes do).
    """

    RANK_IDENTICAL_BUFFERS = ("steps",)

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        class_counts: Sequence[int] | Tensor,
        *,
        queue_size: int = 4096,
        base_k: int = 2,
        embed_dim: int = 32,
        temperature: float = 0.1,
        distill: bool = True,
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher.requires_grad_(False).eval()
        self.teacher_record = record_of(teacher)  # its checkpoints say which teacher (trainer/teacher.py)
        self.distill = distill
        d, d_t = student.feature_dim, teacher.feature_dim
        self.embed_q = mlp(d, d, embed_dim)  # GML's `MLP(d, d, dim)` (mlp=True)
        self.embed_k = mlp(d_t, d_t, embed_dim)
        if d == d_t:  # as released: the key head starts as a copy of the query head
            self.embed_k.load_state_dict(self.embed_q.state_dict())
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self.log_temperature.no_weight_decay = True  # trainer.optim.param_groups: never decayed
        self.queue = ClassBalancedQueue(class_counts, queue_size, base_k, d_t)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training forwards: key ids

    def train(self, mode: bool = True) -> GMLStudent:
        super().train(mode)
        self.teacher.eval()  # BN statistics of the key encoder stay fixed
        return self

    def forward(self, images: Tensor, labels: Tensor | None = None) -> ModelOutput | MoCoOutput:
        if not self.training:
            return self.student(images)
        if labels is None or images.shape[0] != 3 * labels.shape[0]:
            raise ValueError(
                "GML student: a training batch stacks 3 views [cls; q; k] of N images and needs their N "
                f"labels, got {images.shape[0]} images and labels {None if labels is None else labels.shape}"
            )
        n = labels.shape[0]
        out = self.student(images[: 2 * n])
        query = self.embed_q(out.features[n:])
        with torch.no_grad():
            keys = self.teacher(images[2 * n :]).features
            teacher_logits = self.teacher(images[:n]).logits.float() if self.distill else None
        group = batch_group()
        rank, world = rank_and_size(group)
        first = self.steps * (n * world)  # ids of this step's keys: first .. first + N*world - 1
        # The released `concat_all_gather`: every rank enqueues every rank's keys.
        self.queue.push(
            gather_values(keys, group),
            gather_values(labels, group),
            first + torch.arange(n * world, device=labels.device),
        )
        self.steps.add_(1)
        k = self.queue.size
        bank = self.embed_k(self.queue.keys[:k].clone())
        with torch.autocast(images.device.type, enabled=False):  # similarities / T_c in full precision
            sims = F.normalize(query.float(), dim=1) @ F.normalize(bank.float(), dim=1).T
        own_ids = first + rank * n + torch.arange(n, device=labels.device)
        return MoCoOutput(
            features=out.features[:n],
            logits=out.logits[:n],
            queue_similarities=sims,
            queue_sizes=self.queue.sizes,
            own_keys=own_ids.unsqueeze(1) == self.queue.ids[:k].unsqueeze(0),
            temperature=self.log_temperature.exp(),
            teacher_logits=teacher_logits,
        )


def build(cfg: ModelConfig, loss: Loss, *, num_classes: int, class_counts, mean, std) -> GMLStudent:
    """The student (one view: no BCL heads) with the frozen teacher of `model.teacher`, which must have a
    cosine head when the loss distils (its raw cosines are scaled like the student's)."""
    teacher = load_teacher(
        cfg.teacher, num_classes=num_classes, arch=cfg.teacher_arch, head="cosine" if loss.distills else ""
    )
    return GMLStudent(
        build_classifier(cfg, num_classes, loss.head, mean=mean, std=std),
        teacher,
        class_counts,
        queue_size=cfg.gml_queue_size,
        base_k=cfg.gml_base_k,
        embed_dim=cfg.gml_embed_dim,
        temperature=cfg.gml_temperature,
        distill=loss.distills,
    )
