"""The frozen teacher of a two-stage run (GML's key encoder): rebuilt from a finished fastlt run.

`load_teacher("runs/NAME", num_classes=C, arch="resnet56")` reads the newest readable checkpoint of the run
folder `runs/NAME` (`trainer.checkpoint.load_latest`), or a checkpoint file given directly, rebuilds the
classifier that run trained from the resolved config stored in the checkpoint (arch, head, views,
normalisation), loads its weights, and returns it in eval mode with no parameter requiring a gradient.
Every failure is a `CheckpointError` that names `model.teacher` and the file.

A student run's own checkpoints hold the teacher's weights too (they are part of the student's state_dict),
so a resumed student continues with the teacher it started with, even if the teacher's run folder has
gained newer checkpoints since: the folder is read again only to rebuild the teacher's architecture.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from losses import loss_class
from trainer.checkpoint import CheckpointError, load_checkpoint, load_latest
from trainer.classifier import build_classifier
from trainer.config import ConfigError
from trainer.recipe import from_dict

log = logging.getLogger(__name__)


def read_teacher(source: str | Path, key: str = "model.teacher") -> tuple[Path, dict[str, Any]]:
    """(file, checkpoint) for `key` (`model.teacher`, or a stage-2 run's `model.init_from`): a run folder
    means its newest readable checkpoint, anything else is taken as the checkpoint file itself."""
    role = "teacher" if key == "model.teacher" else "stage-1"
    if not str(source).strip():
        raise CheckpointError(f"{key} is empty: give the {role} run's folder (runs/NAME) or checkpoint file")
    path = Path(source)
    if not path.exists():
        raise CheckpointError(
            f"{key}: {path} does not exist (train the {role} run first, or give the path of its "
            "run folder or of a checkpoint file)"
        )
    try:
        if path.is_dir():
            state = load_latest(path)
            return Path(state.pop("path")), state
        return path, load_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"{key}: {err}") from None


def freeze(model: nn.Module) -> nn.Module:
    """No gradients, eval mode (a module that owns it keeps it in eval mode across `train()`)."""
    return model.requires_grad_(False).eval()


def load_teacher(source: str | Path, *, num_classes: int, arch: str = "", head: str = "") -> nn.Module:
    """The frozen classifier of the fastlt run at `source`. It must classify `num_classes` classes and, if
    given, be an `arch` and have a `head` ("cosine" when the student distils from its raw cosines)."""
    path, state = read_teacher(source)
    where = f"model.teacher: {path}"
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{where} is not a fastlt checkpoint (no 'config' and 'model')")
    try:
        cfg = from_dict(state["config"], source=f"{path} (config)")
        kind = loss_class(cfg.loss.name)
    except (ConfigError, ValueError) as exc:
        raise CheckpointError(f"{where}: cannot rebuild the teacher's config: {exc}") from exc
    if kind.model != "classifier":
        raise CheckpointError(
            f"{where} is a {kind.model} run (loss {cfg.loss.name}): a teacher must be a classifier run"
        )
    if arch and cfg.model.arch != arch:
        raise CheckpointError(f"{where} holds a {cfg.model.arch}, but model.teacher_arch is {arch}")
    if head and kind.head != head:
        raise CheckpointError(
            f"{where} has a {kind.head} head (loss {cfg.loss.name}), but distillation (loss.gml_alpha > 0) "
            f"compares raw cosines: give a teacher trained with a {head}-head loss, or set loss.gml_alpha=0"
        )
    weights = state["model"]
    classifier = weights.get("classifier.weight")
    if classifier is None:
        raise CheckpointError(f"{where} has no classifier.weight: not a classifier run")
    found = classifier.shape[1] if kind.head == "cosine" else classifier.shape[0]
    if found != num_classes:
        raise CheckpointError(f"{where} classifies {found} classes, but this run's data has {num_classes}")
    model = build_classifier(
        cfg.model, num_classes, kind.head, mean=cfg.data.mean, std=cfg.data.std, views=kind.num_views
    )
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: the weights do not fit {cfg.model.arch}: {exc}") from exc
    done, planned = state.get("epoch"), cfg.run.epochs
    if isinstance(done, int) and done < planned:
        log.warning(
            "model.teacher: %s is from epoch %d of %d: the teacher run has not finished", path, done, planned
        )
    return freeze(model)
