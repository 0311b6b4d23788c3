"""Background threads that touch CUDA the way the loaders do, for the capture-hazard stage.

* `dali`: allocates and frees device memory (cudaMalloc / cudaFree) and pinned host memory
  (cudaHostAlloc / cudaFreeHost) in a loop, as DALI's decoders do while their buffers grow during the first
  epoch. cudaFree and cudaFreeHost also synchronise the device.
* `ffcv`: after a set-up, only asynchronous host-to-device copies from pinned buffers on its own stream,
  event records and stream waits on events (no host wait), as FFCV 1.0.2's loader thread does in steady
  state.

The raw runtime calls go through the process's own libcudart (the one torch loaded, found in
/proc/self/maps), so they bypass PyTorch's caching allocator exactly like a C++ library would; without it
the thread falls back to fresh-size torch allocations plus `empty_cache` (noted as `mechanism`).
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Any

import torch

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
