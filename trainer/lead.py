"""A bound on how far the host runs ahead of the device: a ring of `MAX_LEAD` CUDA events.

The loops enqueue steps without waiting, and loaders recycle their buffers on the host's clock (FFCV
rewrites a pinned slot when the next batch is asked for; DALI's zero-copy outputs live only while
referenced). `HostLead()` makes the host wait, before enqueuing step i, for the event recorded after step
i - MAX_LEAD (`pipelines.config.MAX_LEAD`), so no buffer is reused while a queued step may read it. The wait
is on one blocking event (the thread sleeps), never on the whole device or in a capture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from pipelines.config import MAX_LEAD


class Event(Protocol):
    def record(self) -> None: ...
    def query(self) -> bool: ...
    def synchronize(self) -> None: ...


def cuda_event() -> Any:
    import torch

    # No timing: the lightest event. Blocking: `synchronize()` sleeps in the driver instead of spinning
    # a core that the loader's decoding threads need.
    return torch.cuda.Event(blocking=True)


class HostLead:
    """A ring of `max_lead` events: `wait()` before enqueuing a step, `record()` right after it.

    Step i records into slot i % max_lead; before step i + max_lead reuses that slot, `wait()` blocks the
    host until step i has finished on the device. Nothing is allocated per step.
    """

    def __init__(self, max_lead: int = MAX_LEAD, new_event: Callable[[], Event] = cuda_event) -> None:
        if max_lead < 1:
            raise ValueError(f"max_lead must be >= 1, got {max_lead}")
        self.max_lead = max_lead
        self._events = [new_event() for _ in range(max_lead)]
        self._recorded = [False] * max_lead
        self._i = 0
        self.waits = 0  # how often the host actually had to wait (a device-bound run waits every step)

    def wait(self) -> None:
        slot = self._i % self.max_lead
        if self._recorded[slot]:
            if not self._events[slot].query():
                self.waits += 1
            self._events[slot].synchronize()

    def record(self) -> None:
        slot = self._i % self.max_lead
        self._events[slot].record()
        self._recorded[slot] = True
        self._i += 1


class NoLead:
    """The same interface doing nothing (CPU steps run synchronously: there is no lead to bound)."""

    max_lead = 0
    waits = 0

    def wait(self) -> None:
        pass

    def record(self) -> None:
        pass


def host_lead(device: Any) -> HostLead | NoLead:
    """The bound a loop over `device` uses: the event ring on CUDA, nothing on CPU."""
    return HostLead() if device.type == "cuda" else NoLead()
