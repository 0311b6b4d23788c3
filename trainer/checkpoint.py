"""Checkpoints: everything a run needs to continue as if it had never stopped, written atomically.

A checkpoint holds the model, the optimizer, the number of finished epochs, every rank's RNG states
(`trainer.rng`), the best evaluation so far and the metrics history (`trainer.history` assembles it). Each is
one `torch.save` file, `checkpoints/epoch-NNNN.pt`, written under a temporary name and renamed, so an
interrupted save leaves the earlier ones intact; the newest `run.keep_checkpoints` are kept, so a file that
was damaged later still leaves an older one to resume from. Everything in it is tensors and plain Python
values, so it loads with `weights_only=True`.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import Any

import torch

from pipelines.fileio import atomic_write_bytes
from trainer.rundir import CHECKPOINT_DIR

FORMAT_VERSION = 1
_NAME = re.compile(r"epoch-(\d+)\.pt")

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, unwritable or does not fit the run; the message names it."""


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"epoch-{epoch:04d}.pt"


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint files, newest (highest epoch) first."""
    found = [
        (int(m.group(1)), p)
        for p in (Path(run_dir) / CHECKPOINT_DIR).glob("epoch-*.pt")
        if (m := _NAME.fullmatch(p.name))
    ]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path = Path(path)
    buf = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buf)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:
        raise CheckpointError(
            f"{path}: cannot write the checkpoint ({exc.strerror or exc}); the earlier checkpoints are kept"
        ) from exc


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for path in checkpoints(run_dir)[keep:]:
        path.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is reported with the file name
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc}") from exc


def load_latest(run_dir: Path) -> dict[str, Any]:
    """The newest readable checkpoint of the run; unreadable newer ones are named in a warning."""
    paths = checkpoints(run_dir)
    if not paths:
        raise CheckpointError(
            f"no checkpoint in {Path(run_dir) / CHECKPOINT_DIR}: the run stopped before its first checkpoint"
        )
    for path in paths:
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:
            log.warning("%s; falling back to an older checkpoint", err)
            continue
        state["path"] = str(path)
        return state
    raise CheckpointError(f"no readable checkpoint in {paths[0].parent}: {', '.join(p.name for p in paths)}")
