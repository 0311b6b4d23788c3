"""A bound on how far the host runs ahead of the device: a ring of `max_lead` CUDA events.

The training loop enqueues steps without waiting for them (the step never syncs; the host reads metrics
only every `run.log_every` steps), so without a bound the host can run tens of steps ahead of the GPU. FFCV
1.0.2 rewrites its pinned host slots as soon as the consumer asks for the next batch, without waiting for
the previous copy out of that slot to have run on the device: once the host leads by more than its few
slots, the GPU trains on images and labels of a later batch, silently. `HostLead(max_lead=2)` makes the
host wait, before enqueuing step i, for the event recorded after step i - 2, so at most 2 steps are queued
and no loader buffer is reused before its copy ran. The wait is normally already satisfied (the GPU is busy
with step i - 1), so it costs nothing when the device is the bottleneck; it waits on one event, never on
the whole device, and never inside a capture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Event(Protocol):
    def record(self) -> None: ...
    def query(self) -> bool: ...
    def synchronize(self) -> None: ...


def cuda_event() -> Any:
    import torch

    return torch.cuda.Event()  # no timing: the lightest event, record/query/synchronize only


class HostLead:
    """A ring of `max_lead` events: `wait()` before enqueuing a step, `record()` right after it.

    Step i records into slot i % max_lead; before step i + max_lead reuses that slot, `wait()` blocks the
    host until step i has finished on the device. Nothing is allocated per step.
    """

    def __init__(self, max_lead: int = 2, new_event: Callable[[], Event] = cuda_event) -> None:
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
