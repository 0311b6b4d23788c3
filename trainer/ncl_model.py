"""NCL's model (model kind "ncl_experts"): K experts, each with a MoCo key branch, and all of its state
updated inside its own training forward.

`build` makes it for a loss from `[model]` (`arch`, `ncl_*`), `check` refuses a section that cannot feed it
before any data is read, and `SHAPE_KEYS` are the keys a resumed run may not change. Invariant: nothing
reads a tensor on the host and shapes are static, so the forward compiles whole and can be captured in a
CUDA graph; under DDP every rank enqueues every rank's keys (`losses.distributed.gather_values`), so the
queues are identical on all ranks by construction (`RANK_IDENTICAL_BUFFERS`, left out of DDP's broadcast).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losses import Loss
from losses.distributed import batch_group, gather_values
from losses.heads import CosineClassifier
from losses.output import ExpertOutput
from pipelines.augment import Normalize
from trainer.archs import ARCHS
from trainer.classifier import mlp
from trainer.config import ConfigError, ModelConfig

SHAPE_KEYS = ("ncl_experts", "ncl_moco_dim", "ncl_queue")  # the experts' number and the queues' size


def fcnorm_classifier(in_features: int, num_classes: int) -> CosineClassifier:
    """The cosine head with the release's FCNorm initialisation: weight [C, d] ~ U(-1, 1), then
    `renorm_(2, 1, 1e-5).mul_(1e5)`, which scales each *feature* column (not each class vector) to unit
    norm. In `CosineClassifier`'s [d, C] layout that is each row. The forward is the same as FCNorm's."""
    head = CosineClassifier(in_features, num_classes)
    with torch.no_grad():
        head.weight.uniform_(-1.0, 1.0)
        head.weight.div_(head.weight.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return head


def saved_copy(buffer: Tensor) -> Tensor:
    """A copy of `buffer` (along dim 1) for the backward to keep, when the forward then writes it in place.

    q's gradient needs the queue as it was; the enqueue overwrites it before the backward runs. A `clone()`
    suffices eagerly but not under Inductor (PyTorch 2.14): the min-cut partitioner treats a clone as cheap,
    recomputes it in the backward from the buffer, after the write, and the gradients come out silently
    wrong (pytorch/pytorch#197039 fixes the partitioner). `index_select` is outside its recompute
    allow-list, so its result is saved. `test_ncl_model.py` checks both the helper and the whole model.
    """
    return buffer.index_select(1, torch.arange(buffer.shape[1], device=buffer.device))


NCL_HEADS: dict[str, Callable[[int, int], nn.Module]] = {
    "cosine": fcnorm_classifier,
    "linear": lambda d, c: nn.Linear(d, c),  # the release's FC: default init, with bias
}


class NCLModel(nn.Module):
    """K experts + MoCo key branches; `forward(uint8 images, labels=None) -> losses.output.ExpertOutput`.

    `body()` builds one fresh body (a module with `feature_dim`): called 2K times, for the K experts and the
    K key bodies, so each starts from its own random initialisation. The ranges of the sizes are checked
    by `ModelConfig`, that the global batch divides the queue by `check`.

    Per expert (`dbm_ltr:cifar/models/resnet_ncl.py:797-961`): a body, a classifier (the cosine head
    initialised as the release's FCNorm, or a linear head), a trainable projector d-d-e; and a key branch:
    a separately initialised body that follows the expert's body by EMA, a projector that keeps its random
    initialisation (the release's EMA loop covers only `backbone` and `module`, `train_fn/ncl.py:43-50`),
    and a queue of Q keys. Queues, the pointer, the key bodies and key projectors are in state_dict.

    Input: the loaders' view-major uint8 batch [2N, 3, H, W], view 0 (rows :N) for classification, view 1
    for the keys. The training forward, in order: queries and raw outputs from view 0; keys from view 1
    under no_grad (one batch permutation shared by the experts for shuffle-BN, drawn on the device); the
    contrastive similarities against the queue as it stands; then, in place, the keys enqueued at a
    device-side pointer and the EMA of the key bodies, the release's `mul_(m).add_(1 - m, p)` repeated
    `ema_updates` times, by default once per expert (its loop over the K experts updates every key body on
    each pass: the effective momentum is 0.999^3 with 3 experts), after the forward and before the
    backward, where the release does it. Evaluation: one view; `logits` = the mean of the experts' raw
    outputs (`validate.py:78`).

    Under DDP the queues fill at the global batch rate: one queue, as one process with the whole batch
    would hold. The key bodies stay equal across ranks (their EMA follows bodies that DDP keeps equal; their
    BN statistics are broadcast from rank 0); shuffle-BN permutes within a rank only. The release trains on
    one GPU; the CIFAR recipes are single-process like it.

    Deviations from the release (none changes what is computed): docs/FIDELITY.md, "NCL".
    """

    RANK_IDENTICAL_BUFFERS = ("queues", "queue_ptr")  # every rank enqueues the same gathered keys

    def __init__(
        self,
        num_classes: int,
        *,
        body: Callable[[], nn.Module],
        mean: Sequence[float],
        std: Sequence[float],
        head: str = "cosine",
        experts: int = 3,
        moco_dim: int = 64,
        queue_size: int = 1024,
        ema_momentum: float = 0.999,
        ema_updates: int | None = None,
        shuffle_bn: bool = True,
        channels_last: bool = False,
        head_fp32: bool = True,
    ) -> None:
        super().__init__()
        if head not in NCL_HEADS:
            raise ValueError(f"NCL model: unknown classifier head {head!r}; valid: {', '.join(NCL_HEADS)}")
        ema_updates = experts if ema_updates is None else ema_updates
        self.num_experts, self.queue_size = experts, queue_size
        self.ema_momentum, self.ema_updates = ema_momentum, ema_updates
        self.shuffle_bn, self.channels_last, self.head_fp32 = shuffle_bn, channels_last, head_fp32
        self.normalize = Normalize(mean, std)
        self.bodies = nn.ModuleList(body() for _ in range(experts))
        d = self.bodies[0].feature_dim
        self.feature_dim = d
        self.classifiers = nn.ModuleList(NCL_HEADS[head](d, num_classes) for _ in range(experts))
        self.projectors = nn.ModuleList(mlp(d, d, moco_dim, batch_norm=False) for _ in range(experts))
        # Key branch: its own random initialisation (not a copy), never given a gradient.
        self.key_bodies = nn.ModuleList(body() for _ in range(experts))
        self.key_projectors = nn.ModuleList(mlp(d, d, moco_dim, batch_norm=False) for _ in range(experts))
        for p in [*self.key_bodies.parameters(), *self.key_projectors.parameters()]:
            p.requires_grad_(False)
        # Queue rows are keys (the release stores their transpose, [e, Q]); unit random vectors to start.
        self.register_buffer("queues", F.normalize(torch.randn(experts, queue_size, moco_dim), dim=2))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def _head_precision(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        # Raw cosines feed an arccos (DBM), the similarities a 1/0.2 scale: heads stay out of bf16.
        return torch.autocast(device.type, enabled=False) if self.head_fp32 else contextlib.nullcontext()

    def forward(self, images: Tensor, labels: Tensor | None = None) -> ExpertOutput:
        """`labels` are not used: every model takes them (trainer.models)."""
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)  # no-op for the loaders' batches
        x = self.normalize(images)
        if not self.training:
            return self._heads([body(x) for body in self.bodies], None)
        if x.shape[0] % 2:
            raise ValueError(
                f"NCL model: a training batch stacks 2 views (classification, key), got {x.shape[0]} images"
            )
        n = x.shape[0] // 2
        features = [body(x[:n]) for body in self.bodies]
        with torch.no_grad():
            keys = self._keys(x[n:])
        output = self._heads(features, keys)  # reads the queue before this batch's keys enter it
        with torch.no_grad():
            self._enqueue(keys)
            self._momentum_update()
        return output

    def _keys(self, x: Tensor) -> Tensor:
        """L2-normalised keys [K, N, e] of the key view, in the batch's order."""
        order = None
        if self.shuffle_bn:
            # One permutation for all experts, drawn on the device (capturable). On one process BN's batch
            # statistics do not depend on the order, so this changes only rounding; it is kept as released.
            order = torch.rand(x.shape[0], device=x.device).argsort()
            x = x[order]
        features = [body(x) for body in self.key_bodies]
        with self._head_precision(x.device):
            if self.head_fp32:
                features = [f.float() for f in features]
            pairs = zip(self.key_projectors, features, strict=True)
            keys = torch.stack([F.normalize(p(f), dim=1) for p, f in pairs]).float()
        return keys if order is None else keys[:, order.argsort()]

    def _heads(self, features: list[Tensor], keys: Tensor | None) -> ExpertOutput:
        with self._head_precision(features[0].device):
            if self.head_fp32:
                features = [f.float() for f in features]
            raw = torch.stack([c(f) for c, f in zip(self.classifiers, features, strict=True)]).float()
            contrast = None
            if keys is not None:
                q = torch.stack(
                    [F.normalize(p(f), dim=1) for p, f in zip(self.projectors, features, strict=True)]
                ).float()
                positive = (q * keys).sum(dim=2, keepdim=True)  # [K, N, 1]
                negative = torch.bmm(q, saved_copy(self.queues).transpose(1, 2))  # [K, N, Q]
                contrast = torch.cat([positive, negative], dim=2)
        return ExpertOutput(torch.cat(features, dim=1).float(), raw.mean(dim=0), raw, contrast)

    def _enqueue(self, keys: Tensor) -> None:
        """Write the global batch's keys [K, N x world, e] at the pointer and advance it, on the device (no
        `.item()`)."""
        # Rows are the gathered dimension: [N, K, e] per rank, back to [K, N x W, e] (views, no copy).
        keys = gather_values(keys.transpose(0, 1), batch_group()).transpose(0, 1)
        n = keys.shape[1]
        slots = self.queue_ptr + torch.arange(n, device=keys.device)
        self.queues.index_copy_(1, slots, keys.to(self.queues.dtype))
        self.queue_ptr.copy_((self.queue_ptr + n) % self.queue_size)

    def _momentum_update(self) -> None:
        """key = m * key + (1 - m) * body, `ema_updates` times, over parameters only (BN running
        statistics of the key bodies come from their own forwards, as released)."""
        ema = [p for body in self.key_bodies for p in body.parameters()]
        source = [p.detach() for body in self.bodies for p in body.parameters()]
        for _ in range(self.ema_updates):
            torch._foreach_mul_(ema, self.ema_momentum)
            torch._foreach_add_(ema, source, alpha=1.0 - self.ema_momentum)


def check(cfg: ModelConfig, loss: type[Loss], *, batch_size: int, world_size: int) -> None:
    """The release builds NCL for CIFAR only (its large-scale NCL path is `pass`), so the experts are CIFAR
    ResNets; the queue is overwritten one whole global batch at a time (every process enqueues the whole
    batch's keys), so the global batch must divide it: the one home of that check."""
    cifar = [name for name, arch in ARCHS.items() if arch.cifar_init]
    if cfg.arch not in cifar:
        raise ConfigError(
            f"loss.name={loss.name!r} trains NCL's CIFAR experts: model.arch must be a CIFAR ResNet "
            f"({', '.join(cifar)}), got model.arch={cfg.arch!r}"
        )
    if batch_size % world_size == 0 and cfg.ncl_queue % batch_size:
        raise ConfigError(
            f"model.ncl_queue={cfg.ncl_queue} must be a multiple of data.batch_size={batch_size} (the global "
            f"batch, over {world_size} process(es)) for loss.name={loss.name!r}: every process enqueues the "
            "whole batch's keys, and the MoCo queue is overwritten one whole batch at a time"
        )


def build(cfg: ModelConfig, loss: Loss, *, num_classes: int, class_counts, mean, std) -> nn.Module:
    """NCL's experts with `loss.head` classifiers; every expert body and key body a fresh `model.arch`."""
    arch = ARCHS[cfg.arch]
    model = NCLModel(
        num_classes,
        body=lambda: arch.build(cfg.pretrained),
        mean=mean,
        std=std,
        head=loss.head,
        experts=cfg.ncl_experts,
        moco_dim=cfg.ncl_moco_dim,
        queue_size=cfg.ncl_queue,
        ema_momentum=cfg.ncl_ema,
        ema_updates=cfg.ncl_ema_updates or None,  # 0: once per expert
        channels_last=cfg.channels_last,
        head_fp32=cfg.head_fp32,
    )
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model
