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

from trainer.checkpoint import CheckpointError
from trainer.teacher import check_classes, read_classifier_run

log = logging.getLogger(__name__)

KEY = "model.init_from"


def stage1_body(source: str | Path, *, arch: str, num_classes: int) -> dict:
    """The body's state_dict (weights and BatchNorm buffers) of the stage-1 classifier run at `source`,
    checked to be an `arch` over `num_classes` classes."""
    run = read_classifier_run(source, key=KEY, role="stage 1", config="the stage-1 config")
    state, where = run.state, run.where
    if run.cfg.model.arch != arch:
        raise CheckpointError(f"{where} holds a {run.cfg.model.arch}, but model.arch is {arch}")
    check_classes(run, num_classes)
    last = state.get("last_eval") or {}
    if last.get("top1") is not None:
        log.info(
            "%s: stage 1 (epoch %s) top-1 %.2f, many %s, medium %s, few %s",
            where,
            state.get("epoch"),
            100 * last["top1"],
            *(_pct(last.get(g)) for g in ("many", "medium", "few")),
        )
    return {k.removeprefix("body."): v for k, v in run.weights.items() if k.startswith("body.")}


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
