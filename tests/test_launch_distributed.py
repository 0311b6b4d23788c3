"""Several processes (torchrun, gloo on the CPU): evaluation counts every sample once and gives the same
metrics as one process; a two-node launch over loopback trains an epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import launch
from tests.helpers import free_port, tiny_argv
from trainer import checkpoint, loop, rundir
from trainer.recipe import load_config
from trainer.step import unwrap

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300

pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    """The user's environment as the README's command meets it: no ACCELERATE_USE_CPU (launch.py joins
    torchrun's processes into one job on a machine without CUDA by itself)."""
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args, str(ROOT / "launch.py")]


def _two_processes(argv: list[str]) -> None:
    """`torchrun --nproc_per_node 2 launch.py *argv`, which must succeed."""
    proc = subprocess.run(
        _torchrun("--nproc_per_node", "2", "--master_port", str(free_port())) + argv,
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    _check(proc, proc.stdout + proc.stderr)


def _check(proc: subprocess.CompletedProcess | subprocess.Popen, out: str) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out[-6000:]}"


def _evaluate_on_one_process(run: Path) -> dict:
    """The run's final checkpoint evaluated by this (single) process."""
    cfg = load_config(run / "config.toml")
    accelerator = launch.make_accelerator(cfg)
    parts = launch.build(cfg, accelerator)
    try:
        state = checkpoint.load_latest(run)
        unwrap(parts.model).load_state_dict(state["model"])
        return loop.evaluate(parts.eval_step, parts.eval_loader)
    finally:
        parts.close()


def test_two_processes_count_every_sample_once(demo_converted, tmp_path):
    # 72 test images over 2 ranks at eval batch 20 per rank: partial last batches on both ranks.
    argv = tiny_argv(
        demo_converted, tmp_path, "ddp", "--data.eval_batch_size=40", "--loss.name=dbm_bs", "--loss.scale=16"
    )
    _two_processes(argv)
    run = tmp_path / "ddp"
    results = json.loads((run / "results.json").read_text())
    env = json.loads((run / "env.json").read_text())
    assert env["world_size"] == 2 and "MULTI_CPU" in env["distributed_type"]
    meta = json.loads((demo_converted / "test.meta.json").read_text())
    assert results["eval_samples"] == meta["num_samples"]
    assert len(rundir.read_metrics(run)) == 1

    single = _evaluate_on_one_process(run)
    assert single["samples"] == meta["num_samples"]
    for group in ("top1", "many", "medium", "few"):
        assert results["final"][group] == pytest.approx(single[group], abs=1e-9), group
    assert results["final"]["per_class"] == pytest.approx(single["per_class"], abs=1e-9)


def test_processes_that_do_not_form_one_job_are_refused(tmp_path):
    """A user who forces Accelerate off its CPU mode gets an error saying what to set, not two copies of the
    job writing one run folder."""
    script = tmp_path / "accelerator.py"
    script.write_text("import launch\nfrom trainer.config import Config\nlaunch.make_accelerator(Config())\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(free_port()), str(script)]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_env(ACCELERATE_USE_CPU="0"), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.returncode != 0
    assert "the launcher started 2 processes (WORLD_SIZE) but Accelerate sees 1" in proc.stderr
    assert "ACCELERATE_USE_CPU=1" in proc.stderr


def _two_nodes(argv: list[str], tmp_path: Path, cwds=(ROOT, ROOT)) -> list[str]:
    """Two single-process `torchrun` nodes on loopback; returns each node's exit code and log."""
    port = str(free_port())
    procs = []
    for node in (0, 1):
        cmd = _torchrun("--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1")
        cmd[-1:-1] = ["--master_addr", "127.0.0.1", "--master_port", port]  # before the script
        log = open(tmp_path / f"node{node}.log", "w")  # noqa: SIM115 - closed below
        procs.append(
            (
                subprocess.Popen(
                    cmd + argv, cwd=cwds[node], env=_env(), stdout=log, stderr=subprocess.STDOUT
                ),
                log,
            )
        )
    try:
        for proc, _ in procs:
            proc.wait(timeout=TIMEOUT)
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
            log.close()
    return [
        (proc.returncode, (tmp_path / f"node{node}.log").read_text()) for node, (proc, _) in enumerate(procs)
    ]


def test_two_nodes_on_loopback(demo_converted, tmp_path):
    argv = tiny_argv(demo_converted, tmp_path, "two_nodes", "--loss.name=fbl")
    for code, log in _two_nodes(argv, tmp_path):
        assert code == 0, log[-6000:]
    run = tmp_path / "two_nodes"
    env = json.loads((run / "env.json").read_text())
    assert env["world_size"] == 2 and env["local_world_size"] == 1
    results = json.loads((run / "results.json").read_text())
    meta = json.loads((demo_converted / "test.meta.json").read_text())
    assert results["eval_samples"] == meta["num_samples"]
    assert rundir.read_metrics(run)[0]["loss"] > 0


def test_a_run_folder_the_other_node_cannot_see_is_refused(demo_converted, tmp_path):
    """Each node resolves a relative run.out_dir in its own working folder: two filesystems, as on a cluster
    whose run folder is on a node-local disk."""
    argv = tiny_argv(demo_converted, tmp_path, "local", "--run.out_dir=runs", "--run.shared_check_s=2")
    cwds = [tmp_path / "node_a", tmp_path / "node_b"]
    for cwd in cwds:
        cwd.mkdir()
    results = _two_nodes(argv, tmp_path, cwds)
    for code, log in results:
        assert code != 0, log[-3000:]
        assert "is not shared between the nodes" in log and "put run.out_dir" in log, log[-3000:]
    assert (
        not rundir.read_metrics(cwds[0] / "runs" / "local")
        if (cwds[0] / "runs/local/metrics.jsonl").exists()
        else True
    )


def test_two_processes_dbm_bcl_with_sync_bn(demo_converted, tmp_path):
    """The large-scale DBM-BCL recipe's machinery on 2 processes, compiled: BalSCL over the global batch,
    SyncBN, view-0 colour jitter, the last partial batch kept (a second shape). Eager and compiled steps give
    one process's gradients in tests/test_losses_distributed.py; the eager launch on 2 processes is
    test_two_processes_count_every_sample_once's."""
    argv = tiny_argv(
        demo_converted,
        tmp_path,
        "bcl",
        "--loss.name=dbm_bcl",
        "--loss.scale=16",
        "--model.sync_bn=true",
        "--step.mode=compile",
        "--step.compile_backend=aot_eager",
        "--data.jitter=[0.4, 0.4, 0.4, 0.0]",
        "--data.drop_last=false",
        "--data.batch_size=20",
    )
    _two_processes(argv)
    (record,) = rundir.read_metrics(tmp_path / "bcl")
    assert record["steps"] == 15 and record["loss"] > 0 and record["top1"] is not None
