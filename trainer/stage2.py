"""Decoupled classifier re-training (cRT, Kang et al., ICLR 2020): stage 2 of a two-stage run.

`model.init_from = "runs/NAME"` (a stage-1 run folder, its newest readable checkpoint, or a checkpoint file)
gives a "classifier" model the stage-1 body: its weights and BatchNorm buffers are loaded, every body
parameter stops requiring a gradient and the body stays in eval mode whatever `train()` says, so no step
(eager, compiled, captured, DDP) changes a weight or a running statistic. The classifier (and BCL's heads)
keep their fresh initialisation and are all that trains; the recipe picks the class-balanced sampler. A
missing run, another arch or another class count is a CheckpointError naming `model.init_from`, raised while
the model is built, before the run folder is written. It reads runs with trainer/teacher.py's reader.
"""

from __future__ import annotations

import logging
from pathlib import Path

from losses import loss_class
from trainer.checkpoint import CheckpointError
from trainer.config import ConfigError
from trainer.recipe import from_dict
from trainer.teacher import read_teacher

log = logging.getLogger(__name__)

KEY = "model.init_from"


def stage1_body(source: str | Path, *, arch: str, num_classes: int) -> dict:
    """The body's state_dict (weights and BatchNorm buffers) of the stage-1 classifier run at `source`,
    checked to be an `arch` over `num_classes` classes."""
    path, state = read_teacher(source, key=KEY)
    where = f"{KEY}: {path}"
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{where} is not a fastlt checkpoint (no 'config' and 'model')")
    try:
        cfg = from_dict(state["config"], source=f"{path} (config)")
        kind = loss_class(cfg.loss.name)
    except (ConfigError, ValueError) as exc:
        raise CheckpointError(f"{where}: cannot rebuild the stage-1 config: {exc}") from exc
    if kind.model != "classifier":
        raise CheckpointError(
            f"{where} is a {kind.model} run (loss {cfg.loss.name}): stage 1 must be a classifier run"
        )
    if cfg.model.arch != arch:
        raise CheckpointError(f"{where} holds a {cfg.model.arch}, but model.arch is {arch}")
    weights = state["model"]
    classifier = weights.get("classifier.weight")
    if classifier is None:
        raise CheckpointError(f"{where} has no classifier.weight: not a classifier run")
    found = classifier.shape[1] if kind.head == "cosine" else classifier.shape[0]
    if found != num_classes:
        raise CheckpointError(f"{where} classifies {found} classes, but this run's data has {num_classes}")
    last = state.get("last_eval") or {}
    if last.get("top1") is not None:
        log.info(
            "%s: stage 1 (epoch %s) top-1 %.2f, many %s, medium %s, few %s",
            where,
            state.get("epoch"),
            100 * last["top1"],
            *(_pct(last.get(g)) for g in ("many", "medium", "few")),
        )
    return {k.removeprefix("body."): v for k, v in weights.items() if k.startswith("body.")}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def init_from(model, source: str, *, arch: str, num_classes: int):
    """Load the stage-1 body into `model` (a LongTailClassifier) and freeze it; returns the model."""
    body = stage1_body(source, arch=arch, num_classes=num_classes)
    try:
        model.body.load_state_dict(body)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{KEY}: {source}: the body does not fit {arch}: {first}") from None
    model.freeze_body()
    return model
