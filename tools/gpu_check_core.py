"""Shared pieces of the GPU check: the result record, the stage context, synthetic batches, the recompile
counter and the host-lead meter (timing is tools/timer.py). A record is one JSON line:

    {"stage": "resnet50", "case": "graph", "status": "ok", "value": 5120.3, "unit": "img/s",
     "baseline": "eager", "ratio": 1.21, "note": "...", "detail": {...}}

`status` is "ok" (`value` finite), "skipped" (`note` says why), "error" (`note` holds the message) or
"timeout"; `ratio` is `value` over the `baseline` case's, measured side by side in one process.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.lead import Event, HostLead, NoLead, cuda_event

STATUSES = ("ok", "skipped", "error", "timeout")
KEYS = ("stage", "case", "status", "value", "unit", "baseline", "ratio", "note", "detail")


def record(
    stage: str,
    case: str,
    value: float | None = None,
    unit: str = "",
    *,
    status: str = "ok",
    baseline: str | None = None,
    ratio: float | None = None,
    note: str = "",
    **detail: Any,
) -> dict[str, Any]:
    if status not in STATUSES:
        raise ValueError(f"status {status!r} not in {STATUSES}")
    if status == "ok" and (value is None or not math.isfinite(value)):
        status, note = "error", f"non-finite figure {value!r}. {note}".strip()
    return {
        "stage": stage,
        "case": case,
        "status": status,
        "value": None if value is None else float(value),
        "unit": unit,
        "baseline": baseline,
        "ratio": None if ratio is None else float(ratio),
        "note": note,
        "detail": detail,
    }


def skipped(stage: str, case: str, why: str) -> dict[str, Any]:
    return record(stage, case, status="skipped", note=why)


def with_ratio(rec: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
    """Set `ratio` = value / base value when both were measured."""
    if base and base["status"] == "ok" and rec["status"] == "ok" and base["value"]:
        rec["baseline"] = base["case"]
        rec["ratio"] = rec["value"] / base["value"]
    return rec


@dataclass
class Context:
    """What a stage gets: the device, the dry-run flag, its deadline, and the run's earlier results."""

    device: torch.device
    dry_run: bool
    deadline: float  # time.monotonic() at which the stage's time cap ends
    results: Path | None = None  # JSON lines written so far by earlier stages
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def earlier(self, stage: str, case: str) -> dict[str, Any] | None:
        """A record of an earlier stage of this run (the last one with that stage and case)."""
        if self.results is None or not self.results.exists():
            return None
        found = None
        for line in self.results.read_text().splitlines():
            rec = json.loads(line)
            if rec["stage"] == stage and rec["case"] == case:
                found = rec
        return found


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_batch(
    batch: int, res: int, device: torch.device, seed: int = 0, num_classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """A uint8 channels_last image batch and int64 labels on `device`, as the loaders hand them over."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, generator=g)
    y = torch.randint(0, num_classes, (batch,), generator=g)
    return x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)


class RecompileCounter(logging.Handler):
    """Counts Dynamo's "Recompiling function" messages inside a `with` block: what `TORCH_LOGS=recompiles`
    prints, read from its artifact logger (`torch._dynamo.guards.__recompiles`) instead of stderr."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0
        self._loggers: list[logging.Logger] = []

    def emit(self, rec: logging.LogRecord) -> None:
        if "Recompiling function" in rec.getMessage():
            self.count += 1

    def __enter__(self) -> RecompileCounter:
        import torch._dynamo.guards  # noqa: F401  (registers the artifact logger)

        torch._logging.set_logs(recompiles=True)
        names = [n for n in logging.root.manager.loggerDict if n.endswith("__recompiles")]
        self._loggers = [logging.getLogger(n) for n in names]
        for lg in self._loggers:
            lg.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for lg in self._loggers:
            lg.removeHandler(self)
        torch._logging.set_logs()


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
