"""Stages `env` (what the machine is) and `gpu_tests` (the `gpu`-marked tests that need neither DALI nor
FFCV: capture, replay, re-capture, no host sync, the host-lead ring)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tools.gpu_check_core import Context, record, skipped

ROOT = Path(__file__).resolve().parents[1]
# gpu tests that run on a box with torch alone (tests/test_loaders_gpu.py needs FFCV and DALI)
GPU_TEST_FILES = ("tests/test_step.py", "tests/test_gpu_check.py")


def _nvidia_smi() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi not found"
    query = "--query-gpu=name,memory.total,driver_version,clocks.max.sm"
    out = subprocess.run([exe, query, "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    return (out.stdout or out.stderr).strip()


def stage_env(ctx: Context) -> Iterator[dict[str, Any]]:
    """The record every run and benchmark writes (trainer/environment.py), plus the GPUs' own figures."""
    from trainer.environment import environment

    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    detail: dict[str, Any] = dict(environment(ctx.device), nvidia_smi=_nvidia_smi())
    if devices:
        props = torch.cuda.get_device_properties(ctx.device)
        detail.update(sms=props.multi_processor_count, memory_gib=props.total_memory / 2**30)
    yield record("env", "cuda_devices", devices, "devices", **detail)


def stage_gpu_tests(ctx: Context) -> Iterator[dict[str, Any]]:
    if not ctx.cuda:
        yield skipped("gpu_tests", "pytest_gpu", "skipped: no CUDA")
        return
    files = [f for f in GPU_TEST_FILES if (ROOT / f).exists()]
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(10.0, ctx.left() - 5))
    except subprocess.TimeoutExpired:
        yield record("gpu_tests", "pytest_gpu", status="timeout", note="pytest ran past the stage cap")
        return
    tail = (out.stdout + out.stderr).strip().splitlines()[-15:]
    counts = {
        k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", "\n".join(tail))
    }
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    yield record(
        "gpu_tests",
        "pytest_gpu",
        counts.get("passed", 0),
        "tests passed",
        note="all passed" if out.returncode == 0 else f"{failed} failed: see detail.tail",
        returncode=out.returncode,
        failed=failed,
        files=files,
        tail=tail,
    )
