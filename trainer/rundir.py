"""The run folder: config, environment, metrics and results, each written atomically by the main process.

{run.out_dir}/{run.name}/
    config.toml              the resolved Config (`load_config` reads it back to the same Config)
    env.json                 versions, device, world size, git commit (trainer.environment)
    metrics.jsonl            one JSON object per epoch
    results.json             best and final evaluation
    per_class_accuracy.png   written by trainer.plot
    checkpoints/epoch-NNNN.pt    the newest run.keep_checkpoints, written by trainer.checkpoint
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipelines.fileio import TEMP_GLOB, atomic_write_text
from trainer.config import Config
from trainer.recipe import dump_toml

CONFIG_FILE = "config.toml"
ENV_FILE = "env.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
PLOT_FILE = "per_class_accuracy.png"
CHECKPOINT_DIR = "checkpoints"


class RunDirError(RuntimeError):
    """A run folder that cannot be started or resumed; the message names the folder."""


def run_dir_for(cfg: Config) -> Path:
    return Path(cfg.run.out_dir) / cfg.run.name


def _json_safe(value: Any) -> Any:
    """Non-finite numbers (a diverged loss) become the strings "nan", "inf", "-inf", so every line stays
    strict JSON and a diverged value never reads as null, which means "not measured" (an empty shot group)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
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
        for path in ckpt_dir.glob(TEMP_GLOB):
            path.unlink()


def clean_stale(run_dir: Path) -> list[tuple[Path, int]]:
    """Remove the temporary files an interrupted write left in the run folder (a checkpoint killed mid-write
    leaves a full-size one); return them with their sizes so the caller can say what it freed. Only fastlt's
    atomic writes name files like `TEMP_GLOB` (a user's own `.notes.tmp` stays), and only the main process of
    a run writes them, under the run's lock."""
    removed = []
    for folder in (run_dir, run_dir / CHECKPOINT_DIR):
        for path in folder.glob(TEMP_GLOB) if folder.is_dir() else ():
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            removed.append((path, size))
    return removed


SHARED_CHECK_FILE = ".shared-check"


def check_shared(run_dir: Path, accelerator: Any, *, timeout: float) -> None:
    """On several nodes, every process must see the run folder rank 0 writes (checkpoints, metrics, and the
    checkpoint a resume reads): rank 0 writes a token there, every process waits up to `timeout` seconds
    (`run.shared_check_s`) to read it back (`sees_token`). A collective: every rank calls it, and every rank
    raises, naming the nodes and ranks that could not see the token. Nodes are told apart by `node_name()`,
    gathered from every process, so the check runs under any launcher (torchrun, accelerate, plain `srun`)."""
    import os

    from accelerate.utils import broadcast_object_list, gather_object

    node = node_name()
    if len(set(gather_object([node]))) == 1:
        return  # one node: one filesystem
    token = [os.urandom(8).hex() if accelerator.is_main_process else None]
    broadcast_object_list(token)
    path = run_dir / SHARED_CHECK_FILE
    if accelerator.is_main_process:
        atomic_write_text(path, token[0])
    accelerator.wait_for_everyone()
    seen = sees_token(path, token[0], timeout=timeout)
    reports = gather_object([(node, accelerator.process_index, seen)])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        path.unlink(missing_ok=True)
    if error := blind_error(run_dir, reports):
        raise error


def node_name() -> str:
    """This process's node: its host name, with the launcher's node index where it sets one (torchrun's
    GROUP_RANK, Slurm's SLURM_NODEID), so that nodes simulated on one host count as several too."""
    import os
    import socket

    host = socket.gethostname()
    index = os.environ.get("GROUP_RANK", os.environ.get("SLURM_NODEID"))
    return host if index is None else f"{host} (node {index})"


def sees_token(path: Path, token: str, *, timeout: float, poll: float = 1.0) -> bool:
    """Whether this process reads `token` from `path` within `timeout` seconds. Before each try it lists the
    folder and its parent: a listing revalidates an NFS client's cached directory entries, where a plain
    open could keep answering from a cached "no such file" until the cache expires."""
    import contextlib
    import os
    import time

    deadline = time.monotonic() + timeout
    while True:
        for folder in (path.parent.parent, path.parent):
            with contextlib.suppress(OSError):
                os.listdir(folder)
        try:
            if path.read_text() == token:
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def blind_error(run_dir: Path, reports: Iterable[tuple[str, int, bool]]) -> RunDirError | None:
    """The error naming the ranks and nodes of the (node, rank, seen) reports that did not see rank 0's
    token, or None if all did."""
    blind = sorted((rank, node) for node, rank, seen in reports if not seen)
    if not blind:
        return None
    who = ", ".join(f"rank {rank} on {node}" for rank, node in blind)
    return RunDirError(
        f"run folder {run_dir} is not shared between the nodes: {who} cannot see what rank 0 writes there; "
        "put run.out_dir (and data.dir) on a filesystem every node mounts"
    )


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
