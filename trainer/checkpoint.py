"""Checkpoints: everything a run needs to continue as if it had never stopped, written atomically.

A checkpoint holds the model, the optimizer, the loss module's buffers, the number of finished epochs, every
rank's RNG states, the best evaluation so far and the metrics history. It is one `torch.save` file written
under a temporary name and renamed, so an interrupted save leaves the previous checkpoint intact. Everything
in it is tensors and plain Python values, so it loads with `weights_only=True`.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.rundir import CHECKPOINT_DIR, atomic_write_bytes

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


# --- RNG states ------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and CUDA generator states, as weights_only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - the legacy global generator is state too
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuples(state["python"]))
    npst = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple | list) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


# --- optimizer -------------------------------------------------------------------------------------------
def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`Optimizer.load_state_dict` replaces each param group's values by the saved ones. A 0-dim learning-rate
    tensor that the step writes into (and a captured graph reads from) would be swapped for a new tensor, so
    tensor-valued hyperparameters are copied into the original tensors, which stay in the groups."""
    keep = [{k: v for k, v in g.items() if isinstance(v, torch.Tensor)} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, tensors in zip(optimizer.param_groups, keep, strict=True):
        for key, original in tensors.items():
            loaded = group[key]
            with torch.no_grad():
                original.copy_(loaded if isinstance(loaded, torch.Tensor) else torch.tensor(loaded))
            group[key] = original
