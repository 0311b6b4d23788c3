"""The run folder: resolved config, environment, per-epoch metrics and results, each written atomically.

    {run.out_dir}/{run.name}/
        config.toml              the resolved Config (`load_config` reads it back to the same Config)
        env.json                 versions, device, world size, git commit
        metrics.jsonl            one JSON object per epoch
        results.json             best and final evaluation
        per_class_accuracy.png   written by trainer.plot
        checkpoints/last.pt      written by trainer.checkpoint

Only the main process calls the writers here; a half-written file is never left behind (temp + rename).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainer.config import Config, dump_toml

CONFIG_FILE = "config.toml"
ENV_FILE = "env.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
PLOT_FILE = "per_class_accuracy.png"
CHECKPOINT_DIR = "checkpoints"

# Distributions whose versions make a figure reproducible; the DALI wheel's name carries its CUDA flavour.
_PACKAGES = ("torch", "torchvision", "accelerate", "ffcv", "numpy", "numba")
_DALI_PREFIX = "nvidia-dali"


class RunDirError(RuntimeError):
    """A run folder that cannot be started or resumed; the message names the folder."""


def run_dir_for(cfg: Config) -> Path:
    return Path(cfg.run.out_dir) / cfg.run.name


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _json_safe(value: Any) -> Any:
    """NaN/inf (an empty few-shot group) become null so every line stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def check_fresh(run_dir: Path) -> None:
    """A new run never overwrites an earlier one: refuse a folder holding a finished epoch of one (a run that
    failed before its first epoch, e.g. on a missing data file, may simply be started again)."""
    metrics = run_dir / METRICS_FILE
    if (
        (metrics.is_file() and metrics.stat().st_size > 0)
        or (run_dir / RESULTS_FILE).exists()
        or any((run_dir / CHECKPOINT_DIR).glob("*.pt"))
    ):
        raise RunDirError(
            f"run folder {run_dir} already holds a run; continue it with --resume {run_dir} "
            "or start a new one with --run.name=NAME (--run.overwrite=true replaces it)"
        )


def clear_run(run_dir: Path) -> None:
    """Remove an earlier run's outputs (only the files a run writes; anything else in the folder stays)."""
    for name in (METRICS_FILE, RESULTS_FILE, PLOT_FILE, ENV_FILE, CONFIG_FILE):
        (run_dir / name).unlink(missing_ok=True)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    if ckpt_dir.is_dir():
        for path in ckpt_dir.glob("*.pt"):
            path.unlink()
        for path in ckpt_dir.glob(".*.tmp"):
            path.unlink()


def start_run_dir(run_dir: Path, cfg: Config, env: dict[str, Any], *, resumed: bool = False) -> None:
    """Create the folder and write config.toml and env.json. On resume the config is rewritten (overrides
    such as a moved data.dir apply from now on) and the new environment is appended to env.json's
    `resumes`, so a run continued on another machine says so."""
    (run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, dump_toml(cfg))
    env_path = run_dir / ENV_FILE
    if resumed and env_path.is_file():
        first = json.loads(env_path.read_text())
        first.setdefault("resumes", []).append(env)
        env = first
    atomic_write_text(env_path, json.dumps(env, indent=1) + "\n")


def write_metrics(run_dir: Path, history: Iterable[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl from the history (on resume this drops epochs after the last checkpoint)."""
    lines = "".join(json.dumps(_json_safe(rec)) + "\n" for rec in history)
    atomic_write_text(run_dir / METRICS_FILE, lines)


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS_FILE, "a") as fh:
        fh.write(json.dumps(_json_safe(record)) + "\n")
        fh.flush()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_results(run_dir: Path, results: dict[str, Any]) -> None:
    atomic_write_text(run_dir / RESULTS_FILE, json.dumps(_json_safe(results), indent=1) + "\n")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _dali_version() -> str | None:
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith(_DALI_PREFIX) and "plugin" not in name:
            return f"{name}=={dist.version}"
    return None


def _git_commit(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def environment(accelerator: Any) -> dict[str, Any]:
    """Versions, device and world size: everything needed to say what produced a figure."""
    import torch

    device = accelerator.device
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    versions = {name: _version(name) for name in _PACKAGES}
    versions["dali"] = _dali_version()
    return {
        "python": sys.version.split()[0],
        "versions": versions,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "device": str(device),
        "device_name": device_name or platform.machine(),
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "git": _git_commit(Path(__file__).resolve().parents[1]),
        "argv": sys.argv,
    }
