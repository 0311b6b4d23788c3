"""The frozen teacher of a two-stage run (GML's key encoder): rebuilt from a finished fastlt run.

`load_teacher("runs/NAME", num_classes=C, arch="resnet56")` reads `runs/NAME/checkpoints/last.pt` (or a
checkpoint file given directly), rebuilds the model that run trained from the resolved config stored in the
checkpoint (arch, head, normalisation), loads its weights, and returns it in eval mode with no parameter
requiring a gradient. Every failure names the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from losses import loss_class
from trainer.checkpoint import CheckpointError, checkpoint_path, load_checkpoint
from trainer.config import ConfigError, from_dict
from trainer.models import build_model

log = logging.getLogger(__name__)


def teacher_checkpoint(source: str | Path) -> Path:
    """A run folder (or a path without a file suffix, such as a run not trained yet) means its last
    checkpoint; anything else is taken as the checkpoint file itself."""
    path = Path(source)
    return checkpoint_path(path) if path.is_dir() or not path.suffix else path


def freeze(model: nn.Module) -> nn.Module:
    """No gradients, eval mode (a module that owns it keeps it in eval mode across `train()`)."""
    return model.requires_grad_(False).eval()


def load_teacher(source: str | Path, *, num_classes: int, arch: str = "") -> nn.Module:
    """The frozen model of the fastlt run at `source`; `arch` (if given) and `num_classes` must match it."""
    if not str(source).strip():
        raise CheckpointError(
            "model.teacher is empty: give the teacher's run folder (runs/NAME) or checkpoint"
        )
    path = teacher_checkpoint(source)
    if not path.is_file():
        raise CheckpointError(
            f"model.teacher: no teacher checkpoint at {path} (train the teacher run first, or give the path "
            f"of its run folder or of a checkpoint file)"
        )
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"model.teacher: {path} is not a fastlt checkpoint (no 'config' and 'model')")
    try:
        cfg = from_dict(state["config"], source=f"{path} (config)")
        head = loss_class(cfg.loss.name).head
    except (ConfigError, ValueError) as exc:
        raise CheckpointError(f"model.teacher: {path}: cannot rebuild the teacher's config: {exc}") from exc
    if arch and cfg.model.arch != arch:
        raise CheckpointError(
            f"model.teacher: {path} holds a {cfg.model.arch}, but model.teacher_arch is {arch}"
        )
    weights = state["model"]
    classifier = weights.get("classifier.weight")
    if classifier is None:
        raise CheckpointError(f"model.teacher: {path} has no classifier.weight: not a classifier run")
    found = classifier.shape[1] if head == "cosine" else classifier.shape[0]
    if found != num_classes:
        raise CheckpointError(
            f"model.teacher: {path} classifies {found} classes, but this run's data has {num_classes}"
        )
    model = build_model(
        cfg.model,
        num_classes,
        head,
        mean=cfg.data.mean,
        std=cfg.data.std,
        bcl_heads=any(k.startswith("head_fc.") for k in weights),
    )
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(
            f"model.teacher: {path}: the weights do not fit {cfg.model.arch}: {exc}"
        ) from exc
    done, planned = state.get("epoch"), cfg.run.epochs
    if isinstance(done, int) and done < planned:
        log.warning(
            "model.teacher: %s is from epoch %d of %d: the teacher run has not finished", path, done, planned
        )
    return freeze(model)
