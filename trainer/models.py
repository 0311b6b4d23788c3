"""Models by name: uint8 images in, `losses.ModelOutput` (or GML's `MoCoOutput`, NCL's `ExpertOutput`) out.

`build_model(cfg, loss, num_classes=..., class_counts=..., mean=..., std=...)` builds the kind of model the
loss names in its `model` class attribute, from the registry `MODELS`:

* "classifier": `build_classifier` (trainer/classifier.py): a body from `ARCHS`, a head from `HEADS`, BCL's
  projection heads when the loss takes several views;
* "gml_student": GML's MoCo student (trainer/gml_model.py): a cosine classifier, the frozen teacher named by
  `model.teacher` as its key encoder, a class-balanced queue.
* "ncl_experts": NCL's K experts with their MoCo key branches (trainer/ncl_model.py), every expert body and
  key body a fresh `ARCHS[model.arch]`.

Every model's forward is `forward(images, labels=None)`: the training step passes the labels (a model that
needs them reads them; the others ignore them), evaluation passes images only.

`check_model` refuses, before any data is read, a `[model]` section that cannot feed the loss (`MODEL_CHECKS`:
NCL needs a CIFAR ResNet and a queue that the per-process batch divides).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import nn

from trainer.classifier import ARCHS, HEADS, Arch, LongTailClassifier, build_classifier
from trainer.config import ConfigError, ModelConfig
from trainer.gml_model import GMLStudent
from trainer.ncl_model import NCLModel

__all__ = [
    "ARCHS",
    "HEADS",
    "MODELS",
    "Arch",
    "LongTailClassifier",
    "build_classifier",
    "build_model",
    "check_model",
    "rank_identical_buffers",
]


class LossSpec(Protocol):
    """What a model builder reads from the loss (a `losses.Loss`, or its class)."""

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
MODELS: dict[str, Builder] = {
    "classifier": _classifier,
    "gml_student": _gml_student,
    "ncl_experts": _ncl_experts,
}


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


def _check_ncl_experts(cfg: ModelConfig, loss: LossSpec, *, batch_size: int, world_size: int) -> None:
    """The release builds NCL for CIFAR only (its large-scale NCL path is `pass`), so the experts are CIFAR
    ResNets; the queue is overwritten one whole global batch at a time."""
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
