"""The frozen teacher of a two-stage run (GML's key encoder): rebuilt from a finished fastlt run.

`load_teacher("runs/NAME", num_classes=C, arch="resnet56")` reads the run's newest readable checkpoint (or
a checkpoint file), rebuilds its classifier from the resolved config stored there (`model.bn_views` shaped
only BatchNorm statistics, which the weights hold), loads the weights, and returns it in eval mode with no
parameter requiring a gradient. Every failure is a `CheckpointError` naming `model.teacher` and the file.
A student is self-contained: its checkpoints hold the teacher's weights and its `TeacherRecord`, so a
resumed student rebuilds its teacher without the teacher's run folder (`resume_config`, `pinned`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, TypedDict

from torch import nn

from losses import loss_class
from trainer.checkpoint import CheckpointError, load_checkpoint, load_latest
from trainer.classifier import build_classifier
from trainer.config import Config, ConfigError
from trainer.recipe import from_dict

log = logging.getLogger(__name__)


class TeacherRecord(TypedDict):
    """What a student's checkpoint says of its teacher (key "teacher"), with the teacher's weights under
    `teacher.` in its "model"."""

    path: str  # the teacher's checkpoint file
    epoch: int | None
    config: dict[str, Any]  # the teacher run's resolved config: what rebuilds its architecture


def read_teacher(source: str | Path, key: str = "model.teacher") -> tuple[Path, dict[str, Any]]:
    """(file, checkpoint) for `key` (`model.teacher`, or a stage-2 run's `model.init_from`): a run folder
    means its newest readable checkpoint, anything else is taken as the checkpoint file itself; a GML
    student's checkpoint gives the teacher it holds (the file named is then the teacher's own, as the
    student recorded it)."""
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
            path = Path(state.pop("path"))
        else:
            state = load_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"{key}: {err}") from None
    record = state.get("teacher") if isinstance(state, dict) else None
    if isinstance(record, dict) and isinstance(state.get("model"), dict):  # a student's: its teacher
        weights = {
            k.removeprefix("teacher."): v for k, v in state["model"].items() if k.startswith("teacher.")
        }
        return Path(record["path"]), {"config": record["config"], "model": weights, "epoch": record["epoch"]}
    return path, state


def record_of(model: nn.Module) -> TeacherRecord | None:
    """The `TeacherRecord` of a model built with a teacher (None for any other)."""
    return getattr(model, "teacher_record", None)


def pinned(cfg: Config, model: nn.Module, resumed: dict[str, Any] | None = None) -> Config:
    """`cfg` with `model.teacher` naming the teacher file `model` was built with (a run folder given names
    its newest checkpoint at the time): what the run records, so its config says which teacher it used.
    A run `resumed` from a checkpoint that does not record its teacher keeps `cfg`: the folder's newest
    checkpoint now need not be the one the run started with (whose weights the checkpoint restores)."""
    record = record_of(model)
    if record is None or cfg.model.teacher == record["path"]:
        return cfg
    if resumed is not None and not isinstance(resumed.get("teacher"), dict):
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, teacher=record["path"]))


def resume_config(cfg: Config, state: dict[str, Any]) -> Config:
    """The config a resumed run builds its model from: a GML student's checkpoint holds its teacher, so the
    teacher is rebuilt from that checkpoint (`state["path"]`), not from the teacher's run folder."""
    if not isinstance(state.get("teacher"), dict) or not cfg.model.teacher:
        return cfg  # not a student, or a checkpoint from before students recorded their teacher
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, teacher=str(state["path"])))


def freeze(model: nn.Module) -> nn.Module:
    """No gradients, eval mode (a module that owns it keeps it in eval mode across `train()`)."""
    return model.requires_grad_(False).eval()


@dataclasses.dataclass(frozen=True)
class ClassifierRun:
    """A finished classifier run read for another run: GML's teacher, or cRT's stage 1 (trainer/stage2.py)."""

    path: Path  # its checkpoint file
    where: str  # "<key>: <path>", what every message about it starts with
    state: dict[str, Any]  # the checkpoint
    cfg: Config  # the run's config, rebuilt
    kind: Any  # its loss class: head, num_views, model

    @property
    def weights(self) -> dict[str, Any]:
        return self.state["model"]


def read_classifier_run(source: str | Path, *, key: str, role: str, config: str) -> ClassifierRun:
    """The checkpoint at `source` (for `key`) with its config rebuilt, refused with a CheckpointError naming
    `key` unless it is a fastlt classifier run; `role` and `config` name the run and its config in the
    messages ("a teacher", "the teacher's config")."""
    path, state = read_teacher(source, key=key)
    where = f"{key}: {path}"
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{where} is not a fastlt checkpoint (no 'config' and 'model')")
    try:
        cfg = from_dict(state["config"], source=f"{path} (config)")
        kind = loss_class(cfg.loss.name)
    except (ConfigError, ValueError) as exc:
        raise CheckpointError(f"{where}: cannot rebuild {config}: {exc}") from exc
    if kind.model != "classifier":
        raise CheckpointError(
            f"{where} is a {kind.model} run (loss {cfg.loss.name}): {role} must be a classifier run"
        )
    return ClassifierRun(path, where, state, cfg, kind)


def check_classes(run: ClassifierRun, num_classes: int) -> None:
    """Refuse a run whose classifier does not classify `num_classes` classes."""
    classifier = run.weights.get("classifier.weight")
    if classifier is None:
        raise CheckpointError(f"{run.where} has no classifier.weight: not a classifier run")
    found = classifier.shape[1] if run.kind.head == "cosine" else classifier.shape[0]
    if found != num_classes:
        raise CheckpointError(
            f"{run.where} classifies {found} classes, but this run's data has {num_classes}"
        )


def load_teacher(source: str | Path, *, num_classes: int, arch: str = "", head: str = "") -> nn.Module:
    """The frozen classifier of the fastlt run at `source`. It must classify `num_classes` classes and, if
    given, be an `arch` and have a `head` ("cosine" when the student distils from its raw cosines)."""
    run = read_classifier_run(source, key="model.teacher", role="a teacher", config="the teacher's config")
    path, state, cfg, kind, where = run.path, run.state, run.cfg, run.kind, run.where
    if arch and cfg.model.arch != arch:
        raise CheckpointError(f"{where} holds a {cfg.model.arch}, but model.teacher_arch is {arch}")
    if head and kind.head != head:
        raise CheckpointError(
            f"{where} has a {kind.head} head (loss {cfg.loss.name}), but distillation (loss.gml_alpha > 0) "
            f"compares raw cosines: give a teacher trained with a {head}-head loss, or set loss.gml_alpha=0"
        )
    check_classes(run, num_classes)
    weights = run.weights
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
    model.teacher_record = TeacherRecord(path=str(path), epoch=done, config=state["config"])
    return freeze(model)
