"""Runs that survive a cluster: a stop signal checkpoints and a resume continues exactly, one run per folder
(a lock naming its holder, stale ones taken over), and the SLURM script that requeues and resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import launch
from tests.helpers import assert_same_run, free_port, launch_failure, slurm_dry_run, tiny_argv
from tests.test_resume import EXTRA
from trainer import checkpoint, rundir, stop
from trainer.config import to_dict
from trainer.recipe import load_config
from trainer.rundir import RunDirError
from trainer.runlock import LOCK_FILE, STALE_S, RunLock

ROOT = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()


# ---- signals -----------------------------------------------------------------------------------------------
def test_a_signal_only_sets_a_flag_that_the_loop_reads():
    before = signal.getsignal(signal.SIGUSR1)
    with stop.handlers():
        assert not stop.agreed(torch.device("cpu"))
        os.kill(os.getpid(), signal.SIGUSR1)  # would end the process without the handler
        assert stop.agreed(torch.device("cpu")) and stop.signal_name() == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


def _torchrun(argv: list[str], **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(free_port()), str(ROOT / "launch.py"), *argv]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, **popen)


def _finish(proc: subprocess.Popen, expect_ok: bool = True) -> str:
    out, _ = proc.communicate(timeout=300)
    assert (proc.returncode == 0) == expect_ok, f"exit {proc.returncode}:\n{out[-6000:]}"
    return out


def _rank_pid(parent: int, rank: int) -> int:
    """The pid of the torchrun worker of `rank` (a child of the agent `parent`)."""
    for _ in range(600):
        for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in environ:
                return int(child)
        time.sleep(0.1)
    raise AssertionError(f"no worker of rank {rank} under {parent}")


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_and_the_resume_matches_an_uninterrupted_run(demo_converted, tmp_path):
    """Two processes (gloo); SIGTERM reaches rank 1 only, during epoch 2 of a run that checkpoints only at its
    end: both ranks stop at the same step, rank 0 writes the epoch-1 state it held in memory, the exit status
    says 75, and `--resume` trains epoch 2 again to the uninterrupted run's end."""
    extra = (*EXTRA, "--run.checkpoint_every=0", "--run.log_every=2")
    straight = _torchrun(
        tiny_argv(demo_converted, tmp_path, "straight", *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    _finish(straight)

    run = tmp_path / "stopped"
    proc = _torchrun(
        tiny_argv(demo_converted, tmp_path, "stopped", *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    worker = _rank_pid(proc.pid, 1)
    seen = []
    for line in proc.stdout:  # rank 0's progress lines: signal once epoch 2 has trained 2 of its 18 steps
        seen.append(line)
        if "epoch 2/2 step 2/" in line:
            break
    os.kill(worker, signal.SIGTERM)
    out = "".join(seen) + _finish(proc, expect_ok=False)
    assert "stopped by SIGTERM during epoch 2 of 2 (epoch-0001.pt holds the state after epoch 1" in out, out
    assert f"resume with: python launch.py --resume {run}" in out
    assert "exitcode  : 75" in out  # torchrun's report of launch.py's own status
    assert [p.name for p in checkpoint.checkpoints(run)] == ["epoch-0001.pt"]
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1]
    assert not (run / LOCK_FILE).exists() and not (run / rundir.RESULTS_FILE).exists()

    _finish(_torchrun(["--resume", str(run)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    a, _ = assert_same_run(tmp_path / "straight", run)
    assert a["epoch"] == 2


# ---- one run per folder ------------------------------------------------------------------------------------
def test_a_second_starter_is_refused_with_the_holders_name(tmp_path):
    run = tmp_path / "r"
    with RunLock(run):
        owner = json.loads((run / LOCK_FILE).read_text())
        assert (owner["pid"], owner["host"]) == (os.getpid(), HOST) and owner["started"] > 0
        with pytest.raises(RunDirError, match=rf"r is in use by pid {os.getpid()} on {HOST} \(started 20"):
            RunLock(run).acquire()
        argv = tiny_argv(tmp_path / "data", tmp_path, "r", "--run.epochs=2")
        with pytest.raises(RunDirError, match="is in use by pid"):  # the same run name
            launch.main(argv)
        cfg = load_config(argv[1], argv[2:])  # a run that wrote its config and first checkpoint
        rundir.start_run_dir(run, cfg, {})
        checkpoint.save_checkpoint(checkpoint.checkpoint_path(run, 1), {"epoch": 1, "config": to_dict(cfg)})
        with pytest.raises(RunDirError, match="is in use by pid"):  # a --resume of the running run
            launch.main(["--resume", str(run)])
        assert (run / LOCK_FILE).exists()  # the refused starters left the holder's lock alone
    assert not (run / LOCK_FILE).exists()


def test_the_refusal_is_one_line(tmp_path):
    with RunLock(tmp_path / "busy"):
        _, last = launch_failure(tiny_argv(tmp_path / "data", tmp_path, "busy"))
    assert last.startswith("launch.py: run folder ") and f"in use by pid {os.getpid()} on {HOST}" in last


def _foreign_lock(run: Path, pid: int, host: str, age: float = 0.0) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host, "started": time.time() - age}))
    os.utime(run / LOCK_FILE, (time.time() - age, time.time() - age))


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _foreign_lock(tmp_path / "a", gone.pid, HOST)
    with caplog.at_level("WARNING"), RunLock(tmp_path / "a"):
        assert json.loads((tmp_path / "a" / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"took over the stale lock of pid {gone.pid} on {HOST}" in caplog.text
    assert "its process is gone" in caplog.text

    _foreign_lock(tmp_path / "b", 1, "node-elsewhere", age=60)  # another host, heartbeat recent: running
    with pytest.raises(RunDirError, match="in use by pid 1 on node-elsewhere"):
        RunLock(tmp_path / "b").acquire()
    _foreign_lock(tmp_path / "b", 1, "node-elsewhere", age=2 * STALE_S)  # no heartbeat for 20 minutes
    with caplog.at_level("WARNING"), RunLock(tmp_path / "b"):
        pass
    assert "lock of pid 1 on node-elsewhere" in caplog.text and "untouched for" in caplog.text


def test_the_holder_keeps_its_lock_fresh(tmp_path):
    with RunLock(tmp_path / "r", heartbeat_s=0.05) as lock:
        old = time.time() - 1000
        os.utime(lock.path, (old, old))
        time.sleep(0.5)
        assert lock.path.stat().st_mtime > old + 900


def test_a_run_that_cannot_start_releases_its_lock_and_leaves_no_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        launch.main(tiny_argv(tmp_path / "no_data", tmp_path, "r"))
    assert not (tmp_path / "r").exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(RunDirError, match=r"a_file/r: a file is in the way \(check run.out_dir\)"):
        launch.main(tiny_argv(tmp_path / "no_data", blocker, "r"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_out_dir_is_one_error(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(RunDirError, match=r"ro/r: cannot create it \(Permission denied\)"):
        launch.main(tiny_argv(tmp_path / "no_data", tmp_path / "ro", "r"))


# ---- SLURM -------------------------------------------------------------------------------------------------
def _dry_run(*argv: str, restart: str | None) -> list[str]:
    """The argv node 0 hands launch.py (SLURM_RESTART_COUNT set to `restart`, or unset for None)."""
    nodes = slurm_dry_run(
        *argv,
        SLURM_NNODES="1",
        GPUS_PER_NODE="2",
        MASTER_ADDR="h",
        PYTHON=sys.executable,
        SLURM_RESTART_COUNT=restart,
    )
    cmd = dict(nodes)["node 0"]
    return cmd[cmd.index("launch.py") + 1 :]


def test_the_slurm_script_asks_for_a_signal_requeues_and_resumes(tmp_path):
    script = (ROOT / "tools/slurm/train.sbatch").read_text()
    assert "#SBATCH --signal=B:USR1@" in script and "#SBATCH --requeue" in script
    assert "scontrol requeue" in script
    argv = ["--config", "configs/demo.toml", f"--run.out_dir={tmp_path}", "--run.name=r", "--data.dir=/d"]
    ckpt = checkpoint.checkpoint_path(tmp_path / "r", 3)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    assert _dry_run(*argv, restart=None) == argv  # a first submission never resumes by itself
    assert _dry_run(*argv, restart="2") == ["--resume", str(tmp_path / "r"), *argv[2:]]
    (tmp_path / "r" / rundir.RESULTS_FILE).write_text("{}")
    assert _dry_run(*argv, restart="2") == argv  # finished: a fresh start, which launch.py refuses
