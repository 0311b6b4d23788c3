"""Learning-rate schedules: pure functions `(epoch, step, steps_per_epoch, epochs, cfg) -> lr`, by name.

`epoch` is 0-indexed, `step` the step within it. All three recipes of the papers set the rate once per
epoch, so these are constant within an epoch; `step` and `steps_per_epoch` are part of
the signature so a per-step schedule can join the registry without changing the loop. The loop writes the
value into the optimizer's lr tensor (`lr.fill_(value)`): no recompile, no recapture.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from trainer.config import OptimConfig

Schedule = Callable[[int, int, int, int, OptimConfig], float]


def _warmup(e1: int, cfg: OptimConfig) -> float | None:
    """Linear warm-up on the 1-indexed epoch e1: lr * e1 / warmup while e1 <= warmup, else None."""
    if e1 <= cfg.warmup_epochs:
        return cfg.lr * e1 / cfg.warmup_epochs
    return None


def cosine(epoch: int, step: int, steps_per_epoch: int, epochs: int, cfg: OptimConfig) -> float:
    """DBM CIFAR `--cos` (cifar/utils/common.py): with e' = epoch + 1 and w = warmup_epochs,
    lr * e'/w for e' <= w, then lr * ½(1 + cos(π (e' - w + 1) / (E - w))).
    For E = 200, w = 5: lr·½(1+cos(π(e'−4)/195)), exactly 0 at e' = 199 and ~6.5e-5·lr at e' = 200."""
    e1 = epoch + 1
    warm = _warmup(e1, cfg)
    if warm is not None:
        return warm
    w = cfg.warmup_epochs
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (e1 - w + 1) / (epochs - w)))


def step_decay(epoch: int, step: int, steps_per_epoch: int, epochs: int, cfg: OptimConfig) -> float:
    """Warm-up, then lr * gamma^k where k = number of milestones m with e' > m (e' = epoch + 1).
    LDAM/FBL CIFAR: milestones (160, 180), gamma 0.01; FBL large: (120, 160), 0.1; Places: (60, 80), 0.1."""
    e1 = epoch + 1
    warm = _warmup(e1, cfg)
    if warm is not None:
        return warm
    return cfg.lr * cfg.gamma ** sum(e1 > m for m in cfg.milestones)


def step_gml(epoch: int, step: int, steps_per_epoch: int, epochs: int, cfg: OptimConfig) -> float:
    """GML's CIFAR schedule (GML/cifar_ce.py and cifar_main.py `adjust_learning_rate`): warm-up while the
    0-indexed epoch e <= w, at lr * (e + 1) / w, so one epoch longer than `step`'s and epoch e = w runs at
    (w + 1) / w * lr (1.2 lr for w = 5); then `step`'s decay, lr * gamma^k for the milestones m with
    e + 1 > m. The release's "e > 160, e > 180" are the 1-indexed milestones (161, 181) here."""
    w = cfg.warmup_epochs
    if w and epoch <= w:
        return cfg.lr * (epoch + 1) / w
    return cfg.lr * cfg.gamma ** sum(epoch + 1 > m for m in cfg.milestones)


def cosine_shifted(epoch: int, step: int, steps_per_epoch: int, epochs: int, cfg: OptimConfig) -> float:
    """DBM large scale (large_scale/utils/util.py): lr * ½(1 + cos(π (e - w + 1) / (E - w + 1))), 0-indexed e,
    w = warmup_epochs (5: the released constant). No warm-up: w only shifts the phase, so the rate is
    ~0.995·lr at e = 0, lr at e = w - 1 and ~3e-4·lr at the last of 90 epochs."""
    w = cfg.warmup_epochs
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - w + 1) / (epochs - w + 1)))


def constant(epoch: int, step: int, steps_per_epoch: int, epochs: int, cfg: OptimConfig) -> float:
    return cfg.lr


SCHEDULES: dict[str, Schedule] = {
    "cosine": cosine,
    "step": step_decay,
    "step_gml": step_gml,
    "cosine_shifted": cosine_shifted,
    "constant": constant,
}


def lr_at(cfg: OptimConfig, epoch: int, step: int, steps_per_epoch: int, epochs: int) -> float:
    """The rate of `cfg.schedule` (validated by OptimConfig) at (epoch, step)."""
    return SCHEDULES[cfg.schedule](epoch, step, steps_per_epoch, epochs, cfg)
