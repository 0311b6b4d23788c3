"""Checkpoints: everything a run needs to continue as if it had never stopped, written atomically.

A checkpoint holds the model, the optimizer, the finished epochs, every rank's RNG states (`trainer.rng`),
the best evaluation so far and the metrics history (`trainer.history`): one `torch.save` file,
`checkpoints/epoch-NNNN.pt`, written under a temporary name and renamed; the newest `run.keep_checkpoints`
are kept. Plain tensors and values only, so it loads with `weights_only=True`. Each file holds a SHA-256 of
the rest (`digest`), checked on load: a damaged file is reported by name and an older one is used.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from pathlib import Path
from typing import Any

import torch

from pipelines.fileio import atomic_write_bytes
from trainer.rundir import CHECKPOINT_DIR
from trainer.torchload import load_reason

FORMAT_VERSION = 1
DIGEST_KEY = "sha256"
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


def digest(state: Any) -> str:
    """SHA-256 over a checkpoint's contents in order: keys, values, each tensor's dtype, shape and bytes."""
    h = hashlib.sha256()
    _feed(h, state)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, list | tuple):
        h.update(f"{type(obj).__name__}{len(obj)};".encode())
        for value in obj:
            _feed(h, value)
    else:  # None, bool, int, float, str: repr round-trips them
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def encode(state: dict[str, Any]) -> bytes:
    """The bytes of a checkpoint file holding `state` and its checksum (tensors copied to the host: later
    steps do not change them)."""
    full = {"format_version": FORMAT_VERSION, **state}
    full[DIGEST_KEY] = digest(full)
    buf = io.BytesIO()
    torch.save(full, buf)
    return buf.getvalue()


def save_checkpoint(path: Path, state: dict[str, Any] | bytes) -> None:
    """Write `state` (or what `encode` made of it earlier) to `path` atomically."""
    path = Path(path)
    data = state if isinstance(state, bytes) else encode(state)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise CheckpointError(
            f"{path}: cannot write the checkpoint ({exc.strerror or exc}); the earlier checkpoints are kept"
        ) from exc


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for path in checkpoints(run_dir)[keep:]:
        path.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state in `path`, its SHA-256 verified: a flipped bit inside a tensor loads without error, so
    only the digest catches it. Files written before the checksum existed load unverified."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is reported with the file name
        raise CheckpointError(f"{path}: cannot read checkpoint: {_reason(path, exc)}") from exc
    expected = state.pop(DIGEST_KEY, None) if isinstance(state, dict) else None
    if expected is not None and expected != digest(state):
        raise CheckpointError(f"{path}: checksum mismatch, the file was damaged after it was written")
    return state


def _reason(path: Path, exc: Exception) -> str:
    """Why torch.load failed, in one line that is never empty (a zero-byte file raises a bare EOFError)."""
    try:
        if path.stat().st_size == 0:
            return "the file is empty (0 bytes): a write that never finished"
    except OSError:
        pass
    return load_reason(exc) if str(exc).strip() else f"{type(exc).__name__} (truncated or not a checkpoint)"


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
