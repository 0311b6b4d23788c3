"""How far the host runs ahead of the device: `LeadMeter` measures it without changing it (one event per
step, polled with `query()`, no wait), `run_with_lead` drives a step with the trainer's bound
(`trainer.lead.HostLead`) or without it (`NoLead`). Both take any event type with `record()`, `query()` and
`synchronize()`: `torch.cuda.Event` on a GPU; the tests' CPU twin plays a slow device with a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainer.lead import Event, HostLead, NoLead, cuda_event


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
