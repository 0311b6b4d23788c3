"""Stages `env` (what the machine is) and `gpu_tests` (the `gpu`-marked tests that need neither DALI nor
FFCV: capture, replay, re-capture, no host sync, the host-lead rings, collectives under capture), run
verbosely with explicit ids so that a run cut at its cap still records every test that finished."""

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
# The `gpu` tests that need torch alone (tests/test_loaders_gpu.py needs FFCV and DALI), in the order they
# run: the ones that prove the capture-before-the-loaders fix, the host-lead rings and graph == eager first,
# so a stage cut short still reports them; the slower compile-heavy ones last.
GPU_TESTS = (
    "tests/test_step.py::test_graph_prepared_before_the_loaders_equals_eager",
    "tests/test_gpu_check.py::test_ring_bounds_the_lead_of_a_slow_cuda_step",
    "tests/test_loop.py::test_the_host_never_leads_the_gpu_by_more_than_two_steps",
    "tests/test_loop.py::test_evaluation_never_leads_the_gpu_by_more_than_max_lead_steps",
    "tests/test_gpu_check.py::test_capture_before_the_thread_survives_a_dali_like_thread",
    "tests/test_gpu_check.py::test_capture_survives_an_ffcv_like_thread",
    "tests/test_step.py::test_graph_equals_eager_fp32",
    "tests/test_step.py::test_graph_step_never_syncs_bf16",
    "tests/test_step.py::test_graph_stays_valid_after_loading_a_checkpoint",
    "tests/test_collectives_capture.py::test_collectives_are_captured_and_replayed_on_cuda",
    "tests/test_losses_compile.py::test_cuda_graph_replay_sees_set_epoch",
    "tests/test_ncl_model.py::test_cuda_graph_capture_replays_the_stateful_forward",
    "tests/test_gml_model.py::test_gpu_step_without_host_syncs",
    "tests/test_losses_modules.py::test_buffers_follow_to_cuda",
    "tests/test_augment_ops.py::test_cuda_matches_cpu",
    "tests/test_augment_compiled.py::test_inductor_augmentation_matches_eager_on_cuda",
)
OUTCOMES = ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS")
_RESULT = re.compile(r"^(\S+::\S+) (" + "|".join(OUTCOMES) + r")\b", re.M)


def pytest_outcomes(text: str) -> dict[str, list[str]]:
    """{outcome: [test ids]} from `pytest -v` output, complete or cut short: every test that finished is in
    it whether or not pytest lived to print its summary."""
    found: dict[str, list[str]] = {}
    for test_id, outcome in _RESULT.findall(text):
        found.setdefault(outcome.lower(), []).append(test_id)
    return found


def run_pytest(tests: list[str], timeout: float, cwd: Path = ROOT) -> dict[str, Any]:
    """Run `tests` verbosely under `timeout` seconds; the outcome of each test that finished, and which of
    `tests` never reported (their files, where pytest expanded parameters), even when pytest was killed."""
    cmd = [sys.executable, "-m", "pytest", "-v", "-rA", "-p", "no:cacheprovider", "-m", "gpu", *tests]
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        text, returncode, timed_out = done.stdout + done.stderr, done.returncode, False
    except subprocess.TimeoutExpired as exc:  # the partial output holds every test that finished
        text = "".join(o.decode() if isinstance(o, bytes) else o or "" for o in (exc.stdout, exc.stderr))
        returncode, timed_out = None, True
    outcomes = pytest_outcomes(text)
    reported = {t.split("[")[0] for ids in outcomes.values() for t in ids}
    return {
        "outcomes": outcomes,
        "not_reported": [t for t in tests if t not in reported],
        "timed_out": timed_out,
        "returncode": returncode,
        "tail": text.strip().splitlines()[-15:],
    }


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
    tests = [t for t in GPU_TESTS if (ROOT / t.split("::")[0]).exists()]
    result = run_pytest(tests, timeout=max(10.0, ctx.left() - 5))
    outcomes = result["outcomes"]
    failed = len(outcomes.get("failed", [])) + len(outcomes.get("error", []))
    if result["timed_out"]:
        note = f"cut at the stage cap: {len(result['not_reported'])} test(s) never reported"
    else:
        note = "all passed" if result["returncode"] == 0 else f"{failed} failed: see detail.outcomes"
    yield record(
        "gpu_tests",
        "pytest_gpu",
        len(outcomes.get("passed", [])),
        "tests passed",
        status="timeout" if result["timed_out"] else "ok",
        note=note,
        failed=failed,
        **result,
    )
