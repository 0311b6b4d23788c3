"""`make gpu-check` (tools/gpu_check.py): its CPU dry run, the host-lead ring, and, on a GPU, the capture
and lead checks it reports."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import ThreadDevice, ThreadEvent
from tools.gpu_check_core import KEYS, STATUSES, Context, RecompileCounter, record, run_with_lead
from trainer.lead import HostLead, NoLead

ROOT = Path(__file__).resolve().parents[1]
# Stages with something to measure on a CPU, and the CUDA-only ones the dry run must skip.
CPU_STAGES = {"env", "ddp", "resnet50", "augment"}
CUDA_STAGES = {"gpu_tests", "capture", "cifar", "decode"}
CUDA_CASES = {"graph", "host_lead_free", "host_lead_ring2"}


def _run(tmp_path: Path, *args: str) -> tuple[list[dict], str]:
    out = tmp_path / "check.jsonl"
    cmd = [sys.executable, "tools/gpu_check.py", "--dry-run", "--out", str(out), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in out.read_text().splitlines()], proc.stdout


def _check_schema(rec: dict) -> None:
    assert set(KEYS) <= set(rec), rec
    assert rec["status"] in STATUSES
    assert isinstance(rec["detail"], dict) and rec["dry_run"] is True
    if rec["status"] == "ok":
        assert isinstance(rec["value"], float) and math.isfinite(rec["value"]), rec
        assert rec["unit"]
    else:
        assert rec["value"] is None and rec["note"], rec
    if rec["ratio"] is not None:
        assert math.isfinite(rec["ratio"]) and rec["baseline"]


@pytest.mark.slow  # compiles two tiny models and two augmentations (about 30 s on a loaded 2-core box)
def test_dry_run_schema_and_cpu_figures(tmp_path):
    start = time.monotonic()
    recs, stdout = _run(tmp_path)
    assert time.monotonic() - start < 120
    for rec in recs:
        _check_schema(rec)
        assert json.dumps(rec) in stdout  # every line is also printed
    stages = {r["stage"] for r in recs}
    assert stages == CPU_STAGES | CUDA_STAGES
    for stage in CPU_STAGES:
        assert any(r["stage"] == stage and r["status"] == "ok" for r in recs), stage
    for rec in recs:
        if rec["stage"] in CUDA_STAGES or rec["case"] in CUDA_CASES:
            assert rec["status"] == "skipped" and "no CUDA" in rec["note"], rec
        else:
            assert rec["status"] == "ok", rec  # nothing CPU-capable failed or was skipped
    by_case = {(r["stage"], r["case"]): r for r in recs}
    assert by_case[("resnet50", "compile")]["baseline"] == "eager"
    assert by_case[("ddp", "compile_ddp_vs_eager")]["detail"]["within_1e_3"]
    assert by_case[("augment", "autoaugment_cutout_eager")]["detail"]["fraction_of_step"] > 0
    assert "stage" in stdout.splitlines()[-len(recs) - 1]  # the table's header, then one row per record


def test_isolated_stage_and_budget_skip(tmp_path):
    """A stage in its own process reports back; a stage that would start too late is skipped."""
    recs, _ = _run(tmp_path, "--isolate", "yes", "--only", "env,ddp", "--budget", "19")
    env, ddp = recs
    _check_schema(env)
    _check_schema(ddp)
    assert env["status"] == "ok" and env["value"] == 0.0  # no CUDA device in the dry run
    assert ddp["status"] == "skipped" and "too late" in ddp["note"]  # ddp needs 20 s, < 19 s were left


def test_record_refuses_non_finite_figures():
    assert record("s", "c", float("nan"), "x")["status"] == "error"
    assert record("s", "c", 1.5, "x")["status"] == "ok"
    with pytest.raises(ValueError):
        record("s", "c", 1.0, status="maybe")


def test_recompile_counter_counts_dynamo_recompiles():
    torch._dynamo.reset()

    @torch.compile(backend="eager", dynamic=False)
    def double(x):
        return x * 2

    with RecompileCounter() as counter:
        for n in (2, 3, 4):
            double(torch.ones(n))
    torch._dynamo.reset()
    assert counter.count == 2  # the first shape compiles, the next two recompile


# --- the host-lead ring, on a CPU twin of an asynchronous device ---


def _lead_run(lead_of, steps: int = 30) -> dict:
    device = ThreadDevice()
    batches = list(range(steps))  # a loader that is never the bottleneck

    def slow_step(_batch) -> None:
        device.submit(lambda: time.sleep(0.005))

    return run_with_lead(
        slow_step, batches, lead_of(lambda: ThreadEvent(device)), lambda: ThreadEvent(device)
    )


def test_ring_keeps_the_host_at_most_two_steps_ahead_cpu_twin():
    free = _lead_run(lambda new: NoLead())
    ring = _lead_run(lambda new: HostLead(2, new))
    assert free["max_lead"] > 5  # without the ring the host queues far ahead of the slow device
    assert ring["max_lead"] <= 2
    assert ring["waits"] > 0  # and it got there by waiting, not by luck


def test_ring_rejects_a_zero_lead():
    with pytest.raises(ValueError):
        HostLead(0)


# --- GPU ---


@pytest.mark.gpu
def test_ring_bounds_the_lead_of_a_slow_cuda_step():
    """A slow synthetic step (a spinning kernel) fed by a loader that is never late."""
    batches = [torch.full((4,), i, device="cuda") for i in range(40)]
    sink = torch.zeros(4, device="cuda")

    def slow_step(batch):
        torch.cuda._sleep(2_000_000)  # ~1 ms of device time: the GPU is the bottleneck
        sink.add_(batch)

    torch.cuda.synchronize()
    free = run_with_lead(slow_step, batches, NoLead())
    torch.cuda.synchronize()
    ring = run_with_lead(slow_step, batches, HostLead(2))
    torch.cuda.synchronize()
    assert free["max_lead"] > 5
    assert ring["max_lead"] <= 2
    assert sink[0].item() == 2 * sum(range(40))  # every step ran, in both runs


def _gpu_ctx() -> Context:
    return Context(torch.device("cuda", 0), False, time.monotonic() + 120)


@pytest.mark.gpu
def test_capture_before_the_thread_survives_a_dali_like_thread(monkeypatch):
    from tools.gpu_check_capture import _raw_case, _trainer_case

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # graph and eager compared in fp32

    raw = _raw_case(_gpu_ctx(), "dali", "global", thread_first=False)
    assert raw["value"] == 1.0 and raw["calls"] > 0, raw
    trainer = _trainer_case(_gpu_ctx(), capture_first=True)
    assert trainer["value"] == 1.0 and trainer["graphs"] == 1, trainer


@pytest.mark.gpu
def test_capture_survives_an_ffcv_like_thread():
    from tools.gpu_check_capture import _raw_case

    out = _raw_case(_gpu_ctx(), "ffcv", "global", thread_first=True)
    assert out["value"] == 1.0 and out["calls"] > 0 and not out["errors"], out


def test_every_listed_gpu_test_exists_and_is_gpu_marked():
    """The gpu_tests stage names its tests one by one: a renamed test must not silently drop out of it."""
    from tools.gpu_check_env import GPU_TESTS

    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "gpu"]
    proc = subprocess.run([*cmd, *GPU_TESTS], cwd=ROOT, capture_output=True, text=True, timeout=300)
    collected = {line.split("[")[0] for line in proc.stdout.splitlines() if "::" in line}
    assert set(GPU_TESTS) <= collected, set(GPU_TESTS) - collected
    assert len(set(GPU_TESTS)) == len(GPU_TESTS)


def test_a_pytest_run_killed_part_way_keeps_the_tests_that_finished(tmp_path):
    """The gpu_tests stage's pytest is killed at the stage cap: what finished before is still recorded, and
    the tests that never ran are named."""
    from tools.gpu_check_env import run_pytest

    (tmp_path / "test_part.py").write_text(
        "import time\nimport pytest\n\n"
        "pytestmark = pytest.mark.gpu\n\n"
        "def test_fast():\n    assert True\n\n"
        "def test_broken():\n    assert False\n\n"
        "def test_hangs():\n    time.sleep(600)\n\n"
        "def test_never_reached():\n    assert True\n"
    )
    (tmp_path / "conftest.py").write_text(
        "def pytest_configure(config):\n    config.addinivalue_line('markers', 'gpu: a GPU test')\n"
    )
    names = ("test_fast", "test_broken", "test_hangs", "test_never_reached")
    ids = [f"test_part.py::{name}" for name in names]
    start = time.monotonic()
    result = run_pytest(ids, timeout=12, cwd=tmp_path)  # pytest reaches test_hangs in about a second
    assert time.monotonic() - start < 40
    assert result["timed_out"] and result["returncode"] is None
    assert result["outcomes"] == {"passed": [ids[0]], "failed": [ids[1]]}
    assert result["not_reported"] == ids[2:]
