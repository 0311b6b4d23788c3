"""Conversion progress: a tqdm bar on a terminal, one plain line per interval in batch-job logs.

SLURM, nohup and CI capture stderr to a file, where a bar's carriage-return frames pile up into one unreadable
line; there each progress point is a line of its own: `<stem>: done/total images (pct), img/s, ETA`.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

from ..clock import duration

DEFAULT_INTERVAL = 30.0  # seconds between two log lines: ~120 lines for an hour-long ImageNet conversion


class LineProgress:
    """`update()` per sample; prints a line when `interval` seconds have passed since the last one, and a
    final line on `close()` (so a log always ends with the totals)."""

    def __init__(self, total: int, desc: str, stream: TextIO, interval: float = DEFAULT_INTERVAL):
        self.total, self.desc, self.stream, self.interval = total, desc, stream, interval
        self.done = 0
        self.start = self._last = time.perf_counter()
        self._printed = -1

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else float("inf")
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        print(
            f"{self.desc}: {self.done}/{self.total} images ({pct:.0f}%), {rate:.0f} img/s, "
            f"elapsed {duration(elapsed)}, ETA {duration(eta)}",
            file=self.stream,
            flush=True,
        )
        self._last, self._printed = now, self.done

    def close(self) -> None:
        if self._printed != self.done:
            self._line(time.perf_counter())

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int, desc: str, enabled: bool = True, interval: float = DEFAULT_INTERVAL, stream=None):
    """A bar on a terminal, `LineProgress` elsewhere, a silent tqdm when disabled; all take `update()`."""
    stream = sys.stderr if stream is None else stream
    if enabled and not _is_terminal(stream):
        return LineProgress(total, desc, stream, interval)
    return tqdm(
        total=total,
        unit="img",
        desc=desc,
        disable=not enabled,
        file=stream,
        mininterval=0.5,
        smoothing=0.05,
    )


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
