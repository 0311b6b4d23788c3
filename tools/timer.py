"""The one timer of the bench tools: CUDA events on a GPU, a host clock on a CPU, warm-up never on the clock.

    timer = Timer(device)              # or Timer("cpu", clock="thread") on a shared host
    timer.warm_up(step, 3)             # compiles, captures, JIT: run, then wait for the device
    ms = 1e3 * timer.per_call(step, 20)

On CUDA the timed calls run between two events with one synchronisation at the end, so no call waits for
the device; a host clock would measure the launches, not the work. `torch.utils.benchmark.Timer` does the
same but pins torch to one thread and has no thread-CPU clock, which the loss bench needs on busy hosts.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

CLOCKS = ("wall", "thread")


class Timer:
    """Seconds per call of a function on `device`.

    clock="thread" (CPU only) reads the calling thread's CPU time instead of the wall clock: on a shared host
    it leaves out the time spent waiting for a core. It needs one torch intra-op thread
    (`torch.set_num_threads(1)`), since work done on other threads would go uncounted."""

    def __init__(self, device: torch.device | str = "cpu", clock: str = "wall") -> None:
        self.device = torch.device(device)
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
        if clock == "thread" and (self.device.type == "cuda" or torch.get_num_threads() != 1):
            raise ValueError("clock='thread' times CPU runs with torch.set_num_threads(1) only")
        self.clock = clock
        self.cuda = self.device.type == "cuda"

    def warm_up(self, fn: Callable[[], object], calls: int) -> None:
        """Run `fn` `calls` times off the clock, then wait until the device has finished their work."""
        for _ in range(calls):
            fn()
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def per_call(self, fn: Callable[[], object], calls: int) -> float:
        """Mean seconds per call over `calls` back-to-back calls of `fn`."""
        if calls < 1:
            raise ValueError(f"calls must be >= 1, got {calls}")
        if self.cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return begin.elapsed_time(end) / 1e3 / calls
        now = time.thread_time if self.clock == "thread" else time.perf_counter
        start = now()
        for _ in range(calls):
            fn()
        return (now() - start) / calls
