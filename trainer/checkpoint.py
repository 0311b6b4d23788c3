"""Checkpoints: everything a run needs to continue as if it had never stopped, written atomically.

A checkpoint holds the model, the optimizer, the number of finished epochs, every rank's RNG states
(`trainer.rng`), the best evaluation so far and the metrics history (`trainer.history` assembles it). It is
one `torch.save` file written under a temporary name and renamed, so an interrupted save leaves the previous
checkpoint intact. Everything in it is tensors and plain Python values, so it loads with `weights_only=True`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from pipelines.fileio import atomic_write_bytes
from trainer.rundir import CHECKPOINT_DIR

LAST = "last.pt"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or does not fit the run; the message names the file."""


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / LAST


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buf)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: the run stopped before its first checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is reported with the file name
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc}") from exc
