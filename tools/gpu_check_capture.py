"""Stages `capture` and `ddp`: CUDA-graph capture while a loader-like thread is live, and DDP + capture.

`capture`: does a capture survive a thread that allocates (DALI-like, via the process's own libcudart,
bypassing torch's allocator) or only copies (FFCV-like), in global and thread-local mode, and do replays
stay correct while it runs? A case is 1.0 when capture succeeded and replays reproduced an eager run, else
0.0 (`note` has the error); cases that may break the context run last. `ddp`: the graph step on a
DDP-wrapped model (world size 1) with a DRW switch, against eager without DDP: largest parameter
difference over their scale.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tools.gpu_check_core import Context, images_batch, record, skipped
from tools.gpu_check_trainer import build_step

OK = "ok=1"


# --- loader-like threads ---

MIB = 1 << 20


def find_cudart() -> ctypes.CDLL | None:
    """The CUDA runtime library already mapped into this process (None if torch links it statically)."""
    torch.cuda.init()
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = sorted({line.split()[-1] for line in maps.splitlines() if "libcudart.so" in line.split()[-1]})
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if hasattr(lib, "cudaMalloc") and hasattr(lib, "cudaHostAlloc"):
            return lib
    return None


class LoaderThread(threading.Thread):
    """Runs `kind`'s CUDA calls in a loop until `stop()`; counts calls and the error codes returned."""

    def __init__(self, kind: str, device: torch.device) -> None:
        super().__init__(daemon=True, name=f"{kind}-like-loader")
        if kind not in ("dali", "ffcv"):
            raise ValueError(f"unknown loader thread kind {kind!r}")
        self.kind, self.device = kind, device
        self._stop = threading.Event()
        self.started_work = threading.Event()
        self.calls = 0
        self.errors: dict[str, int] = {}
        self.lib = find_cudart() if kind == "dali" else None
        self.mechanism = "libcudart" if self.lib is not None else ("torch" if kind == "dali" else "streams")

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self.join(timeout=30)
        return {"thread": self.kind, "mechanism": self.mechanism, "calls": self.calls, "errors": self.errors}

    def _error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def run(self) -> None:
        torch.cuda.set_device(self.device)
        try:
            {"dali": self._dali, "ffcv": self._ffcv}[self.kind]()
        except Exception as exc:  # the thread's own failure is a result, not a crash of the check
            self._error(f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        finally:
            self.started_work.set()

    def _dali(self) -> None:
        if self.lib is None:
            return self._dali_torch()
        lib, ptr = self.lib, ctypes.c_void_p()
        sizes = [2 * MIB, 6 * MIB, 10 * MIB]
        i = 0
        while not self._stop.is_set():
            size = sizes[i % len(sizes)]
            rc = lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(size))
            self._count("cudaMalloc", rc)
            if rc == 0:
                self._count("cudaFree", lib.cudaFree(ptr))
            rc = lib.cudaHostAlloc(ctypes.byref(ptr), ctypes.c_size_t(size // 2), ctypes.c_uint(0))
            self._count("cudaHostAlloc", rc)
            if rc == 0:
                self._count("cudaFreeHost", lib.cudaFreeHost(ptr))
            i += 1
            self.started_work.set()

    def _dali_torch(self) -> None:
        stream = torch.cuda.Stream(self.device)
        i = 0
        with torch.cuda.stream(stream):
            while not self._stop.is_set():
                size = (2 + i % 7) * MIB + 4096 * (i % 13)  # fresh sizes: the cache rarely has a block
                try:
                    buf = torch.empty(size, dtype=torch.uint8, device=self.device)
                    pinned = torch.empty(size // 2, dtype=torch.uint8, pin_memory=True)
                    del buf, pinned
                    torch.cuda.empty_cache()  # cudaFree: synchronises the device
                    self.calls += 3
                except RuntimeError as exc:
                    self._error(str(exc).splitlines()[0][:120])
                i += 1
                self.started_work.set()

    def _ffcv(self) -> None:
        stream = torch.cuda.Stream(self.device)
        host = [torch.empty(4 * MIB, dtype=torch.uint8).pin_memory() for _ in range(3)]
        dev = [torch.empty(4 * MIB, dtype=torch.uint8, device=self.device) for _ in range(3)]
        done = [torch.cuda.Event() for _ in range(3)]
        i = 0
        while not self._stop.is_set():
            slot = i % 3
            stream.wait_event(done[slot])  # as FFCV: the copy stream waits for the slot, the host does not
            host[slot].fill_(i % 251)  # the CPU writes the next batch into the pinned slot
            with torch.cuda.stream(stream):
                dev[slot].copy_(host[slot], non_blocking=True)
                done[slot].record(stream)
            self.calls += 2
            i += 1
            self.started_work.set()

    def _count(self, name: str, rc: int) -> None:
        self.calls += 1
        if rc != 0:
            self._error(f"{name} -> cudaError {rc}")


# --- capture ---


class RawStep:
    """A plain-torch training step with static buffers (a 24-layer MLP: ~150 kernels, so the capture
    window lasts long enough for the thread to land in it)."""

    def __init__(self, device: torch.device, seed: int = 0) -> None:
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for _ in range(24):
            layers += [nn.Linear(256, 256), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(256, 10)).to(device)
        self.x = torch.randn(512, 256, device=device)
        self.y = torch.randint(0, 10, (512,), device=device)
        self.params = list(self.net.parameters())

    def __call__(self) -> None:
        loss = nn.functional.cross_entropy(self.net(self.x), self.y)
        loss.backward()
        with torch.no_grad():
            torch._foreach_add_(self.params, [p.grad for p in self.params], alpha=-0.01)
            torch._foreach_zero_([p.grad for p in self.params])

    def flat(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in self.params])


def _eager_reference(device: torch.device, steps: int) -> torch.Tensor:
    ref = RawStep(device)
    for _ in range(steps):
        ref()
    return ref.flat()


def _raw_case(ctx: Context, thread_kind: str | None, mode: str, thread_first: bool) -> dict[str, Any]:
    """Warm up, capture in `mode` (thread running during the capture if `thread_first`), replay 5 times
    with the thread running, compare with 8 eager steps."""
    dev = ctx.device
    step = RawStep(dev)
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream(dev).wait_stream(side)
    thread = LoaderThread(thread_kind, dev) if thread_kind else None
    graph = torch.cuda.CUDAGraph()
    error = ""
    try:
        if thread is not None and thread_first:
            thread.start()
            thread.started_work.wait(10)
        with torch.cuda.graph(graph, capture_error_mode=mode):
            step()
        if thread is not None and not thread_first:
            thread.start()
            thread.started_work.wait(10)
        for _ in range(5):
            graph.replay()
        torch.cuda.synchronize(dev)
    except RuntimeError as exc:
        error = str(exc).splitlines()[0][:300]
    stats = thread.stop() if thread is not None and thread.ident is not None else {}
    if error:
        return {"value": 0.0, "note": f"capture or replay failed: {error}", **stats}
    same = torch.allclose(step.flat(), _eager_reference(dev, 8), rtol=1e-5, atol=1e-6)
    return {"value": 1.0 if same else 0.0, "note": "" if same else "replays differ from eager", **stats}


def _trainer_case(ctx: Context, capture_first: bool) -> dict[str, Any]:
    """The trainer's own graph step (tiny ResNet, fp32): its capture happens at step `graph_warmup + 1`.
    `capture_first`: warm up and capture before the DALI-like thread starts (the fix); otherwise the
    thread runs from the start, as a DALI loader does today during the first epoch."""
    dev = ctx.device
    batches = [images_batch(32, 32, dev, seed=s, num_classes=10) for s in range(8)]
    kw: dict[str, Any] = dict(precision="fp32", compile_backend="aot_eager", graph_warmup=2)
    graph = build_step("resnet_tiny", 10, "graph", dev, **kw)
    eager = build_step("resnet_tiny", 10, "eager", dev, precision="fp32")
    thread = LoaderThread("dali", dev)
    error = ""
    try:
        for i, (x, y) in enumerate(batches):
            if i == (3 if capture_first else 0):
                thread.start()
                thread.started_work.wait(10)
            graph(x, y)
        torch.cuda.synchronize(dev)
    except RuntimeError as exc:
        error = str(exc).splitlines()[0][:300]
    stats = thread.stop() if thread.ident is not None else {}
    if error:
        return {"value": 0.0, "note": f"trainer step failed: {error}", **stats}
    for x, y in batches:
        eager(x, y)
    a, b = graph.parameters(), eager.parameters()
    same = all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4) for k in a)
    note = "" if same else "parameters differ from the eager run"
    return {
        "value": 1.0 if same and graph.captured() else 0.0,
        "note": note,
        "graphs": graph.captured(),
        **stats,
    }


# (case, the expected outcome, how to run it); ordered so that cases which may break the context run last
CAPTURE_CASES: list[tuple[str, str, Callable[[Context], dict[str, Any]]]] = [
    ("capture_then_dali_thread", "pass", lambda c: _raw_case(c, "dali", "global", thread_first=False)),
    ("ffcv_thread_global", "pass", lambda c: _raw_case(c, "ffcv", "global", thread_first=True)),
    ("trainer_capture_first", "pass", lambda c: _trainer_case(c, capture_first=True)),
    (
        "dali_thread_thread_local",
        "unknown",
        lambda c: _raw_case(c, "dali", "thread_local", thread_first=True),
    ),
    ("dali_thread_global", "fail", lambda c: _raw_case(c, "dali", "global", thread_first=True)),
    ("trainer_mid_run_dali_thread", "fail", lambda c: _trainer_case(c, capture_first=False)),
]


def stage_capture(ctx: Context) -> Iterator[dict[str, Any]]:
    torch.backends.cudnn.allow_tf32 = False  # graph and eager runs are compared in fp32
    torch.backends.cuda.matmul.allow_tf32 = False
    for case, expected, run in CAPTURE_CASES:
        if ctx.left() < 10:
            yield skipped("capture", case, f"stage time cap reached ({ctx.left():.0f} s left)")
            continue
        try:
            out = run(ctx)
        except Exception as exc:
            yield record("capture", case, status="error", note=f"{type(exc).__name__}: {exc}"[:300])
            continue
        value, note = out.pop("value"), out.pop("note")
        yield record("capture", case, value, OK, note=note, expected=expected, **out)


# --- DDP ---


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_ddp(ctx: Context) -> Iterator[dict[str, Any]]:
    dev = ctx.device
    backend = "nccl" if ctx.cuda else "gloo"
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")  # before the group: captured NCCL
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # fp32 on both sides, so they can agree closely
    try:
        arch, res, batch, n = ("resnet_tiny", 16, 8, 4) if ctx.dry_run else ("resnet20", 32, 64, 16)
        switch = n - 2  # DRW turns on between the last replays (DDP warms up 11 steps, captures the 12th)
        batches = [images_batch(batch, res, dev, seed=s, num_classes=10) for s in range(n)]
        kw: dict[str, Any] = dict(loss="dbm_drw", precision="fp32", compile_backend="aot_eager")
        if ctx.dry_run:
            kw["compile_backend"] = "eager"
        ddp = build_step(arch, 10, "graph", dev, ddp=True, **kw)
        eager = build_step(arch, 10, "eager", dev, loss="dbm_drw", precision="fp32")
        for i, (x, y) in enumerate(batches):
            for t in (ddp, eager):
                t.set_epoch(0 if i < switch else 160, 200)
                t.set_lr(0.05 + 0.01 * i)
                t(x, y)
        a, b = ddp.parameters(), eager.parameters()
        scale = max(float(v.abs().max()) for v in b.values())
        diff = max(float((a[k] - b[k]).abs().max()) for k in a) / max(scale, 1e-12)
        note = (
            f"one process, world size 1 ({backend}); {ddp.mode} mode with DDP vs eager without, "
            f"{n} steps, DRW from step {switch}"
        )
        yield record(
            "ddp",
            "graph_ddp_vs_eager" if ctx.cuda else "compile_ddp_vs_eager",
            diff,
            "max |dp| / max |p|",
            note=note,
            within_1e_3=diff < 1e-3,
            graphs=ddp.captured(),
            mode=ddp.mode,
            world_size=dist.get_world_size(),
        )
    finally:
        torch.backends.cudnn.allow_tf32 = prev
        dist.destroy_process_group()
