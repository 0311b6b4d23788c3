"""Models by name: uint8 images in, `losses.ModelOutput` (or GML's `MoCoOutput`) out.

`build_model(cfg, loss, num_classes=..., class_counts=..., mean=..., std=...)` builds the kind of model the
loss names in its `model` class attribute, from the registry `MODELS`:

* "classifier": `build_classifier`, which stacks `Normalize` (uint8 -> float, the model's first operation, so
  it fuses into the compiled step) -> a body from `ARCHS` (pooled features f) -> a classifier from `HEADS`
  ("linear": nn.Linear with bias; "cosine": raw cosines, the loss applies the scale) -> BCL's two projection
  heads when the loss takes several views (spec/losses.md §4.4);
* "gml_student": GML's MoCo student (trainer/gml_model.py): a cosine classifier, the frozen teacher named by
  `model.teacher` as its key encoder, a class-balanced queue.

Every model's forward is `forward(images, labels=None)`: the training step passes the labels (a model that
needs them, such as the student's class-balanced queue, reads them; the others ignore them), evaluation
passes images only.
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
from trainer.gml_model import GMLStudent
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
    "resnext101_32x8d": Arch(lambda cfg: TorchvisionBody("resnext101_32x8d"), False, 0, 1024),  # GML teacher
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
            self.head = _mlp(d, hidden or d, embed)  # on the features of all 3 views
            self.head_fc = _mlp(d, hidden or d, embed)  # on the raw class vectors -> class centres
            # Every rank computes the centres from the same (replicated) weights: its BatchNorm1d has
            # nothing to synchronise, and `trainer.sync_bn.convert_sync_bn` leaves it alone.
            self.head_fc.sync_bn = False

    def class_vectors(self) -> Tensor:
        """The raw (un-normalised) class vectors as rows, [C, d]: BCL's `W^T`."""
        w = self.classifier.weight
        return w.t() if isinstance(self.classifier, CosineClassifier) else w

    def _heads(self, f: Tensor, contrast: bool) -> ModelOutput:
        if not contrast:
            return ModelOutput(f.float(), self.classifier(f).float())
        # A BCL training batch stacks [v0; v1; v2] (one encoder pass, BN statistics shared across views):
        # classify view 0, contrast the others. The projection MLP runs on all 3B rows, so its BatchNorm1d
        # statistics include view 0 (and view 0's features get the gradient that flows through them), and
        # view 0's embeddings are dropped afterwards, as the released code does.
        b = f.shape[0] // self.views
        logits = self.classifier(f[:b])
        embeddings = F.normalize(self.head(f)[b:].float(), dim=1)
        centers = F.normalize(self.head_fc(self.class_vectors()).float(), dim=1)
        return ModelOutput(f[:b].float(), logits.float(), embeddings, centers)

    def forward(self, images: Tensor, labels: Tensor | None = None) -> ModelOutput:
        """`labels` are not used: every model takes them (see the module docstring)."""
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)  # no-op for the loaders' batches
        f = self.body(self.normalize(images))
        contrast = self.bcl and self.training  # in eval mode there is one view and only the logits
        if contrast and f.shape[0] % self.views:
            raise ValueError(
                f"BCL model: a training batch stacks {self.views} views, got {f.shape[0]} images"
            )
        if self.head_fp32:
            # Raw cosines feed an arccos (DBM) and a scale of ~30: keep the (small) heads out of bf16.
            with torch.autocast(f.device.type, enabled=False):
                return self._heads(f.float(), contrast)
        return self._heads(f, contrast)


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
    """What a model builder reads from the loss (a `losses.Loss`)."""

    name: str
    head: str
    num_views: int
    model: str


def _classifier(cfg: ModelConfig, loss: LossSpec, *, num_classes: int, class_counts, mean, std) -> nn.Module:
    return build_classifier(cfg, num_classes, loss.head, mean=mean, std=std, views=loss.num_views)


def _gml_student(cfg: ModelConfig, loss: LossSpec, *, num_classes: int, class_counts, mean, std) -> nn.Module:
    """The student classifier (one view: no BCL heads), with the frozen teacher of `cfg.teacher`. The
    teacher must have a cosine head when the loss distils (its raw cosines are scaled like the student's)."""
    from trainer.teacher import load_teacher  # here: trainer.teacher rebuilds teachers with build_classifier

    if cfg.gml_queue_size < num_classes * cfg.gml_base_k:
        raise ConfigError(
            f"model.gml_queue_size={cfg.gml_queue_size}: the queue needs model.gml_base_k={cfg.gml_base_k} "
            f"slots for each of the data's {num_classes} classes, at least {num_classes * cfg.gml_base_k}"
        )
    distill = bool(getattr(loss, "distills", False))
    teacher = load_teacher(
        cfg.teacher,
        num_classes=num_classes,
        arch=cfg.teacher_arch,
        head="cosine" if distill else "",
    )
    return GMLStudent(
        build_classifier(cfg, num_classes, loss.head, mean=mean, std=std),
        teacher,
        class_counts,
        queue_size=cfg.gml_queue_size,
        base_k=cfg.gml_base_k,
        embed_dim=cfg.gml_embed_dim,
        temperature=cfg.gml_temperature,
        distill=distill,
    )


Builder = Callable[..., nn.Module]
MODELS: dict[str, Builder] = {"classifier": _classifier, "gml_student": _gml_student}


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


def rank_identical_buffers(model: nn.Module) -> list[str]:
    """Full names of the buffers that every process updates identically by construction (a module lists them
    in `RANK_IDENTICAL_BUFFERS`): DDP need not broadcast them from rank 0 before every forward (see
    launch.build)."""
    return [
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        for name in getattr(module, "RANK_IDENTICAL_BUFFERS", ())
    ]
