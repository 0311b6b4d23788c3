"""Model kinds by name: uint8 images in, `losses.ModelOutput` (GML: `MoCoOutput`, NCL: `ExpertOutput`) out.

A loss names the kind of model that feeds it in its class attribute `model`, a key of `MODELS`. Each kind is
one `ModelKind` record whose builder, checks and resume-shape keys live in the kind's own module
(trainer/classifier.py, trainer/gml_model.py, trainer/ncl_model.py): a new kind is its module and one line
here. Every model's forward is `forward(images, labels=None)`: the training step passes the labels (a model
that needs them reads them; the others ignore them), evaluation passes images only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from losses import Loss
from trainer import classifier, gml_model, ncl_model
from trainer.archs import ARCHS, Arch
from trainer.classifier import HEADS, LongTailClassifier, build_classifier
from trainer.config import ConfigError, ModelConfig

__all__ = [
    "ARCHS",
    "HEADS",
    "MODELS",
    "Arch",
    "LongTailClassifier",
    "ModelKind",
    "build_classifier",
    "build_model",
    "check_model",
    "rank_identical_buffers",
    "training_views",
]


@dataclass(frozen=True)
class ModelKind:
    # (cfg.model, loss, *, num_classes, class_counts, mean, std) -> the model
    build: Callable[..., nn.Module]
    # (cfg.model, loss class, *, batch_size, world_size) -> None, a ConfigError naming the key at fault
    check: Callable[..., None] | None = None
    # [model] keys besides `arch` whose change gives the kind's model another shape (refused on resume)
    shape_keys: tuple[str, ...] = ()
    # whether the kind honours `model.bn_views` (extra views that only BatchNorm sees) with a one-view loss
    bn_views: bool = False


MODELS: dict[str, ModelKind] = {
    "classifier": ModelKind(classifier.build, shape_keys=classifier.SHAPE_KEYS, bn_views=True),
    "gml_student": ModelKind(gml_model.build, shape_keys=gml_model.SHAPE_KEYS),
    "ncl_experts": ModelKind(ncl_model.build, check=ncl_model.check, shape_keys=ncl_model.SHAPE_KEYS),
}


def _kind(loss: Loss | type[Loss]) -> ModelKind:
    if loss.model not in MODELS:
        raise ConfigError(f"loss.name={loss.name!r} needs model {loss.model!r}; known: {', '.join(MODELS)}")
    return MODELS[loss.model]


def build_model(
    cfg: ModelConfig,
    loss: Loss,
    *,
    num_classes: int,
    class_counts: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
) -> nn.Module:
    """The model `loss` needs (its kind `loss.model`) for `num_classes` classes with the per-class training
    `class_counts`; inputs are uint8 NCHW normalised with `mean` / `std`."""
    kind = _kind(loss)
    return kind.build(cfg, loss, num_classes=num_classes, class_counts=class_counts, mean=mean, std=std)


def check_model(cfg: ModelConfig, loss: Loss | type[Loss], *, batch_size: int, world_size: int) -> None:
    """Refuse, before any data is read, a `[model]` section that cannot feed `loss` (a class will do) at the
    global `batch_size` over `world_size` processes: a ConfigError naming the keys at fault."""
    kind = _kind(loss)
    if cfg.bn_views > 1 and not (kind.bn_views and loss.num_views == 1):
        raise ConfigError(
            f"model.bn_views={cfg.bn_views}: only a classifier run with a one-view loss takes extra views; "
            f"loss.name={loss.name!r} trains a {loss.model} on {loss.num_views} view(s)"
        )
    if cfg.init_from and loss.model != "classifier":
        raise ConfigError(
            f"model.init_from: stage 2 re-trains a classifier's head; loss.name={loss.name!r} trains a "
            f"{loss.model} model"
        )
    if kind.check is not None:
        kind.check(cfg, loss, batch_size=batch_size, world_size=world_size)


def training_views(cfg: ModelConfig, loss: Loss | type[Loss]) -> tuple[int, str]:
    """(views per image, view recipe) of a training batch for the model `loss` needs: the loss's own
    (`num_views`, `view_recipe`), or `model.bn_views` views of the "classification" recipe (checked by
    `check_model`)."""
    if cfg.bn_views > 1:
        return cfg.bn_views, "classification"
    return loss.num_views, loss.view_recipe


def rank_identical_buffers(model: nn.Module) -> list[str]:
    """Full names of the buffers that every process updates identically by construction (a module lists them
    in `RANK_IDENTICAL_BUFFERS`): DDP need not broadcast them from rank 0 before every forward (see
    launch.build)."""
    return [
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        for name in getattr(module, "RANK_IDENTICAL_BUFFERS", ())
    ]
