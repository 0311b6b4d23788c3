"""The worker pool that decodes and encodes every sample once: tasks in, `(ok, Encoded | error)` out.

Workers are plain processes (fork where the platform has it) running `images.encode_*`; they never import
torch. A failure is reported per sample, so the main process can skip the sample or stop naming it.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from PIL import UnidentifiedImageError

from .images import Encoded, EncodeOptions, encode_array, encode_bytes

_ENCODE: EncodeOptions | None = None


def _init_worker(opts: EncodeOptions, in_process: bool = False) -> None:
    global _ENCODE
    _ENCODE = opts
    if not in_process:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle (it cleans up)
        # Pool.terminate() stops workers with SIGTERM: a Python-level handler inherited from the CLI can miss
        # a signal landing just before a blocking lock wait and leave the pool hanging; restore the default.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _encode_task(task: tuple[str, Any]) -> tuple[bool, Encoded | str]:
    kind, payload = task
    try:
        if kind == "array":
            return True, encode_array(np.asarray(payload), _ENCODE)
        with open(payload, "rb") as fh:
            data = fh.read()
        if not data:
            return False, "empty file"
        return True, encode_bytes(data, _ENCODE)
    except UnidentifiedImageError:
        zeros = not data.strip(b"\0")
        return False, "all zero bytes (zero-filled)" if zeros else "not an image file (unrecognised format)"
    except Exception as exc:  # reported per sample: the main process skips it or stops with its name
        return False, f"{type(exc).__name__}: {exc}"


def encoded_stream(tasks: Iterable[tuple[str, Any]], opts: EncodeOptions, workers: int, n: int) -> Iterator:
    """`(ok, result)` per task, in task order; `workers <= 1` encodes in this process. Close the iterator
    (`contextlib.closing`) to stop the pool, also on errors and Ctrl-C."""
    if workers <= 1 or n < 2:
        _init_worker(opts, in_process=True)
        yield from map(_encode_task, tasks)
        return
    # Not "fork": a process forked while another thread holds one of the pool's queue locks (a progress bar's
    # monitor, torch's or numba's threads, the test runner's) waits on that lock forever, and so does the
    # pool's shutdown. The forkserver forks from a clean single-threaded process; workers import only
    # `pipelines.convert` (0.2 s).
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    chunksize = max(1, min(16, n // (workers * 8)))
    with mp.get_context(method).Pool(workers, initializer=_init_worker, initargs=(opts,)) as pool:
        yield from pool.imap(_encode_task, tasks, chunksize=chunksize)  # ordered: results in write order
