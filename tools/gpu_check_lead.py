"""How far the host runs ahead of the device, and a ring of events that bounds it.

`HostLead(max_lead=2)` is the design proposed for `trainer/loop.py` (issue 12, item 2): before step i the
host waits for the event recorded after step i - max_lead, so at most `max_lead` steps are ever queued on
the device. Why it matters: FFCV 1.0.2 rewrites its pinned host slots as soon as the consumer asks for the
next batch, without waiting for the previous copy out of that slot to have run on the device; a host that
runs many steps ahead of the GPU (graph mode syncs only every `log_every` steps) lets the GPU train on a
slot already overwritten with a later batch. The wait is normally already satisfied (the GPU is busy with
step i - 1), so it costs nothing when the device is the bottleneck; it never syncs the whole device, only
one event, and it is never inside a capture.

`LeadMeter` measures the lead without changing it: one event per step, polled with `query()` (no wait).

Both take any event type with `record()`, `query()` and `synchronize()`: `torch.cuda.Event` on a GPU;
the tests' CPU twin runs the same logic against a worker thread that plays a slow device.
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


class LeadMeter:
    """After each step, `mark()` records an event and returns how many enqueued steps have not finished
    (the step just enqueued included): 1 means the device keeps up, n means the host is n - 1 steps ahead
    of the step the device is running."""

    def __init__(self, new_event: Callable[[], Event] = cuda_event) -> None:
        self._new = new_event
        self._events: list[Event] = []
        self._done = 0  # every event before this index has completed
        self.leads: list[int] = []

    def mark(self) -> int:
        event = self._new()
        event.record()
        self._events.append(event)
        while self._done < len(self._events) and self._events[self._done].query():
            self._done += 1
        lead = len(self._events) - self._done
        self.leads.append(lead)
        return lead

    @property
    def max(self) -> int:
        return max(self.leads, default=0)


def run_with_lead(
    step: Callable[[Any], None],
    batches: list[Any],
    lead: HostLead | NoLead,
    new_event: Callable[[], Event] = cuda_event,
) -> dict[str, float]:
    """Run `step` over `batches` as the loop would (wait, step, record), measuring the lead after each
    step; returns the maximum and mean lead and how often the ring made the host wait."""
    meter = LeadMeter(new_event)
    for batch in batches:
        lead.wait()
        step(batch)
        lead.record()
        meter.mark()
    return {
        "max_lead": float(meter.max),
        "mean_lead": sum(meter.leads) / max(1, len(meter.leads)),
        "waits": float(lead.waits),
        "steps": float(len(batches)),
    }
