"""Models by name: uint8 images in, `losses.ModelOutput` (or NCL's `ExpertOutput`) out.

`build_model(cfg, loss, num_classes=..., class_counts=..., mean=..., std=...)` builds the kind of model the
loss names in its `model` class attribute, from the registry `MODELS`:

* "classifier": `build_classifier`, which stacks `Normalize` (uint8 -> float, the model's first operation, so
  it fuses into the compiled step) -> a body from `ARCHS` (pooled features f) -> a classifier from `HEADS`
  ("linear": nn.Linear with bias; "cosine": raw cosines, the loss applies the scale) -> BCL's two projection
  heads when the loss takes several views (spec/losses.md §4.4);
* "ncl_experts": NCL's K experts with their MoCo key branches (trainer/ncl_model.py), every expert body and
  key body a fresh `ARCHS[model.arch]`.

Every model's forward is `forward(images, labels=None)`: the training step passes the labels (a model that
needs them reads them; the others ignore them), evaluation passes images only.

`check_model` refuses, before any data is read, a `[model]` section that cannot feed the loss (`MODEL_CHECKS`:
NCL needs a CIFAR ResNet and a queue that the per-process batch divides).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losses import CosineClassifier, ModelOutput
from pipelines.augment import Normalize
from trainer.config import ConfigError, ModelConfig
from trainer.ncl_model import NCLModel
from trainer.resnet_cifar import ResNetCifar, kaiming_init_
from trainer.resnet_imagenet import PlacesResNet152, TorchvisionBody


@dataclass(frozen=True)
class Arch:
    build: Callable[[ModelConfig], nn.Module]  # -> body with a `feature_dim` attribute
    cifar_init: bool  # True: kaiming-normal on the heads' Linear weights too (the CIFAR code's `apply`)
    bcl_hidden: int  # BCL MLP width; 0 = the feature dimension (upstream BCL's large-scale heads)
    bcl_embed: int


ARCHS: dict[str, Arch] = {
    "resnet32": Arch(lambda cfg: ResNetCifar(5), True, 512, 128),
    "resnet20": Arch(lambda cfg: ResNetCifar(3), True, 512, 128),
    "resnet56": Arch(lambda cfg: ResNetCifar(9), True, 512, 128),
    "resnet8": Arch(lambda cfg: ResNetCifar(1), True, 512, 128),
    # Narrow ResNet-8 (32-d features) for tests and the CPU demo.
    "resnet_tiny": Arch(lambda cfg: ResNetCifar(1, (8, 16, 32)), True, 64, 32),
    "resnet18": Arch(lambda cfg: TorchvisionBody("resnet18"), False, 0, 1024),
    "resnet50": Arch(lambda cfg: TorchvisionBody("resnet50"), False, 0, 1024),
    "resnext50_32x4d": Arch(lambda cfg: TorchvisionBody("resnext50_32x4d"), False, 0, 1024),
    "resnet152_places": Arch(lambda cfg: PlacesResNet152(cfg.pretrained), False, 0, 1024),
}

HEADS: dict[str, Callable[[int, int], nn.Module]] = {
    "linear": lambda d, c: nn.Linear(d, c),
    "cosine": lambda d, c: CosineClassifier(d, c),
}


def _mlp(d: int, hidden: int, embed: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, embed)
    )


class LongTailClassifier(nn.Module):
    """normalize -> body -> classifier (+ BCL heads). See `build_classifier`."""

    def __init__(
        self,
        normalize: nn.Module,
        body: nn.Module,
        classifier: nn.Module,
        bcl: tuple[int, int] | None,
        *,
        views: int,
        channels_last: bool,
        head_fp32: bool,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.body = body
        self.classifier = classifier
        self.channels_last = channels_last
        self.head_fp32 = head_fp32
        d = body.feature_dim
        self.feature_dim = d
        self.views = views  # images per sample in a training batch (the loss's num_views), view-major
        self.bcl = bcl is not None
        if bcl is not None:
            hidden, embed = bcl
            self.head = _mlp(d, hidden or d, embed)  # on the features of views 1-2
            self.head_fc = _mlp(d, hidden or d, embed)  # on the raw class vectors -> class centres

    def class_vectors(self) -> Tensor:
        """The raw (un-normalised) class vectors as rows, [C, d]: BCL's `W^T`."""
        w = self.classifier.weight
        return w.t() if isinstance(self.classifier, CosineClassifier) else w

    def _heads(self, f: Tensor, bcl_features: Tensor | None) -> ModelOutput:
        logits = self.classifier(f)
        if bcl_features is None:
            return ModelOutput(f.float(), logits.float())
        embeddings = F.normalize(self.head(bcl_features).float(), dim=1)
        centers = F.normalize(self.head_fc(self.class_vectors()).float(), dim=1)
        return ModelOutput(f.float(), logits.float(), embeddings, centers)

    def forward(self, images: Tensor, labels: Tensor | None = None) -> ModelOutput:
        """`labels` are not used: every model takes them (see the module docstring)."""
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)  # no-op for the loaders' batches
        f = self.body(self.normalize(images))
        bcl_features = None
        if self.bcl and self.training:
            # One encoder pass over [v0; v1; v2] (BN statistics shared across views): classify view 0,
            # contrast the others. In eval mode there is one view and only the logits are computed.
            if f.shape[0] % self.views:
                raise ValueError(
                    f"BCL model: a training batch stacks {self.views} views, got {f.shape[0]} images"
                )
            b = f.shape[0] // self.views
            f, bcl_features = f[:b], f[b:]
        if self.head_fp32:
            # Raw cosines feed an arccos (DBM) and a scale of ~30: keep the (small) heads out of bf16.
            with torch.autocast(f.device.type, enabled=False):
                return self._heads(f.float(), None if bcl_features is None else bcl_features.float())
        return self._heads(f, bcl_features)


def build_classifier(
    cfg: ModelConfig,
    num_classes: int,
    head: str,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    views: int = 1,
) -> LongTailClassifier:
    """The model for `cfg.arch` (validated by ModelConfig) with a `head` classifier over `num_classes`;
    inputs are uint8 NCHW. `views` > 1 (the loss's `num_views`: BCL) adds the contrastive heads."""
    bcl_heads = views > 1
    if head not in HEADS:
        raise ValueError(f"unknown classifier head {head!r}; valid: {', '.join(HEADS)}")
    arch = ARCHS[cfg.arch]
    body = arch.build(cfg)
    classifier = HEADS[head](body.feature_dim, num_classes)
    hidden = cfg.bcl_hidden or arch.bcl_hidden
    embed = cfg.bcl_embed or arch.bcl_embed
    model = LongTailClassifier(
        Normalize(mean, std),
        body,
        classifier,
        (hidden, embed) if bcl_heads else None,
        views=views,
        channels_last=cfg.channels_last,
        head_fp32=cfg.head_fp32,
    )
    if arch.cifar_init:
        for module in (model.classifier, *([model.head, model.head_fc] if bcl_heads else [])):
            module.apply(kaiming_init_)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


class LossSpec(Protocol):
    """What a model builder reads from the loss (a `losses.Loss`, or its class)."""

    name: str
    head: str
    num_views: int
    model: str


def _classifier(cfg: ModelConfig, loss: LossSpec, *, num_classes: int, class_counts, mean, std) -> nn.Module:
    return build_classifier(cfg, num_classes, loss.head, mean=mean, std=std, views=loss.num_views)


def _ncl_experts(cfg: ModelConfig, loss: LossSpec, *, num_classes: int, class_counts, mean, std) -> nn.Module:
    """NCL's experts with `loss.head` classifiers; `model.ncl_*` size the experts, queues and EMA."""
    arch = ARCHS[cfg.arch]
    model = NCLModel(
        num_classes,
        body=lambda: arch.build(cfg),
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


Builder = Callable[..., nn.Module]
MODELS: dict[str, Builder] = {"classifier": _classifier, "ncl_experts": _ncl_experts}


def build_model(
    cfg: ModelConfig,
    loss: LossSpec,
    *,
    num_classes: int,
    class_counts: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
) -> nn.Module:
    """The model `loss` needs (its class attribute `model`, a key of `MODELS`) for `num_classes` classes with
    the per-class training `class_counts`; inputs are uint8 NCHW normalised with `mean` / `std`."""
    if loss.model not in MODELS:
        raise ValueError(f"loss {loss.name!r} needs model {loss.model!r}; known models: {', '.join(MODELS)}")
    build = MODELS[loss.model]
    return build(cfg, loss, num_classes=num_classes, class_counts=class_counts, mean=mean, std=std)


def _check_ncl_experts(cfg: ModelConfig, loss: LossSpec, *, batch_size: int, world_size: int) -> None:
    """The release builds NCL for CIFAR only (its large-scale NCL path is `pass`), so the experts are CIFAR
    ResNets; the queue is overwritten one whole per-process batch at a time."""
    cifar = [name for name, arch in ARCHS.items() if arch.cifar_init]
    if cfg.arch not in cifar:
        raise ConfigError(
            f"loss.name={loss.name!r} trains NCL's CIFAR experts: model.arch must be a CIFAR ResNet "
            f"({', '.join(cifar)}), got model.arch={cfg.arch!r}"
        )
    per_rank = batch_size // world_size
    if batch_size % world_size == 0 and cfg.ncl_queue % per_rank:
        raise ConfigError(
            f"model.ncl_queue={cfg.ncl_queue} must be a multiple of the batch per process (data.batch_size="
            f"{batch_size} over {world_size} process(es) = {per_rank}) for loss.name={loss.name!r}: the MoCo "
            "queue is overwritten one whole batch at a time"
        )


# Constraints of a model kind beyond ModelConfig's own checks (kinds without any are absent).
MODEL_CHECKS: dict[str, Callable[..., None]] = {"ncl_experts": _check_ncl_experts}


def check_model(cfg: ModelConfig, loss: LossSpec, *, batch_size: int, world_size: int) -> None:
    """Refuse, before any data is read, a `[model]` section that cannot feed `loss` (a class will do) at the
    global `batch_size` over `world_size` processes: a ConfigError naming the keys at fault."""
    if loss.model not in MODELS:
        raise ConfigError(f"loss.name={loss.name!r} needs model {loss.model!r}; known: {', '.join(MODELS)}")
    check = MODEL_CHECKS.get(loss.model)
    if check is not None:
        check(cfg, loss, batch_size=batch_size, world_size=world_size)
