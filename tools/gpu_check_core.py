"""Shared pieces of the GPU check: the result record, the stage context, timers and synthetic batches.

A record is one JSON line:

    {"stage": "resnet50", "case": "graph", "status": "ok", "value": 5120.3, "unit": "img/s",
     "baseline": "eager", "ratio": 1.21, "note": "...", "detail": {...}}

`status` is "ok" (measured; `value` is a finite number), "skipped" (not run; `note` says why), "error"
(the case raised; `note` holds the message) or "timeout" (the stage ran out of its time cap). `ratio` is
`value` over the value of the case named in `baseline`, measured side by side in the same process.
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


class Clock:
    """Seconds of device time for a block of work: CUDA events on a GPU (one synchronisation, at the end),
    the wall clock on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], object], iters: int) -> float:
        """Mean seconds per call of `fn` over `iters` calls (the caller has warmed it up)."""
        if self.cuda:
            begin = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return begin.elapsed_time(end) / 1e3 / iters
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - start) / iters


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_first_call(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call until its device work is done (compile and capture included)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


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
