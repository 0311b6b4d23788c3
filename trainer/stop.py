"""Stopping on request: SIGTERM and SIGUSR1 (a cluster's time limit, a preemption, SLURM's `--signal`).

The handler only sets a flag; the step never looks at it. The loop reads it where the host already waits
(every `run.log_every` steps and at epoch start), max-reduced over ranks so all stop at the same step: a
rank that stopped alone would leave the others waiting in a collective. Loaders cannot start an epoch
part-way, so a stopped run saves the state at the start of its epoch (held in memory if that epoch wrote
no checkpoint) and a resume reruns that epoch. launch.py exits with EXIT_CODE (75, EX_TEMPFAIL), which
tools/slurm/train.sbatch turns into a requeue.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_received: list[int] = []  # the signals seen by this process (a handler may only append)
_agreed: list[int] = []  # the signal the ranks agreed on (the highest number any of them received)


class StopRequested(Exception):
    """Raised inside an epoch when the ranks agreed to stop (fit turns it into `Stopped`)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stop requested at step {step}")
        self.step = step


class Stopped(Exception):
    """The run stopped on a signal after saving what a resume needs; the message says how to resume."""

    def __init__(self, run_dir: Path, epoch: int, epochs: int, checkpoint: Path, during: bool) -> None:
        where = f"during epoch {epoch + 1} of {epochs}" if during else f"after epoch {epoch} of {epochs}"
        again = ", which a resume trains again from its start" if during else ""
        super().__init__(
            f"stopped by {signal_name()} {where} ({checkpoint.name} holds the state "
            f"{f'after epoch {epoch}' if epoch else 'before epoch 1'}"
            f"{again}); resume with: python launch.py --resume {run_dir}"
        )


def signal_name() -> str:
    seen = _agreed or _received
    return signal.Signals(seen[-1]).name if seen else "request"


def _handler(signum: int, frame: object) -> None:
    _received.append(signum)


@contextlib.contextmanager
def handlers() -> Iterator[None]:
    """Catch SIGTERM and SIGUSR1 for the duration (the main thread only: elsewhere nothing is installed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    _agreed.clear()
    previous = {sig: signal.signal(sig, _handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def agreed(device: torch.device) -> bool:
    """Whether any rank received a stop signal. A collective under several processes: every rank calls it
    at the same points (they already wait for the device there)."""
    signum = max(_received, default=0)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([signum], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        signum = int(t.item())
    if signum:
        _agreed[:] = [signum]
    return bool(signum)
