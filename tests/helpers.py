"""Helpers shared by several test files (imported as `from tests.helpers import ...`)."""

from __future__ import annotations

import json
import math
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from losses import ModelOutput, loss_class
from losses.output import MoCoOutput

ROOT = Path(__file__).resolve().parents[1]

# Per-class training counts for the loss tests: a small long tail, rarest class last.
LOSS_COUNTS = [60, 40, 25, 12, 6]


def tiny_argv(data_dir: Path, out_dir: Path, name: str, *extra: str, backend: str = "ffcv") -> list[str]:
    """`launch.main` arguments: the demo recipe shrunk for a CPU test (tiny ResNet, 32 px, eager, 1 epoch)."""
    return [
        "--config",
        str(ROOT / "configs" / "demo.toml"),
        f"--data.dir={data_dir}",
        "--data.train=train",
        "--data.eval=test",
        f"--data.backend={backend}",
        "--data.resolution=32",
        "--data.batch_size=16",
        "--data.eval_batch_size=32",
        "--data.num_workers=1",
        "--data.auto_augment=",
        "--data.cutout=0",
        "--model.arch=resnet_tiny",
        "--step.mode=eager",
        "--step.precision=fp32",
        "--run.epochs=1",
        "--run.log_every=4",
        "--run.progress=false",
        f"--run.out_dir={out_dir}",
        f"--run.name={name}",
        *extra,
    ]


# A resume test's overrides on top of `tiny_argv` (the demo recipe: padded random crop and flip): two epochs,
# a checkpoint after each, a schedule that changes every epoch, and the rest of the recipes' augmentation
# (AutoAugment + Cutout on the device). Every random draw is a function of (seed, rank, epoch, batch), so an
# interrupted and resumed run and an uninterrupted one draw the same batches, crops and flips included.
RESUME = (
    "--run.epochs=2",
    "--run.checkpoint_every=1",
    "--data.auto_augment=cifar10",
    "--data.cutout=8",
    "--optim.schedule=cosine",
    "--optim.warmup_epochs=1",
    "--optim.lr=0.05",
)


def close(a: float | None, b: float | None, tol: float = 1e-5) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def assert_same_run(a_dir: Path, b_dir: Path) -> tuple[dict, dict]:
    """Two finished runs ended in the same place: the last checkpoints' model state and momentum, every line
    of metrics.jsonl (one per epoch, none repeated) and the results' best and final figures. Returns the two
    last checkpoints."""
    from trainer import checkpoint, rundir

    a, b = checkpoint.load_latest(a_dir), checkpoint.load_latest(b_dir)
    assert a["epoch"] == b["epoch"]
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    states = zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items(), strict=True)
    for (ka, va), (kb, vb) in states:
        assert ka == kb
        torch.testing.assert_close(vb["momentum_buffer"], va["momentum_buffer"], rtol=1e-5, atol=1e-6)
    ra, rb = rundir.read_metrics(a_dir), rundir.read_metrics(b_dir)
    assert [r["epoch"] for r in rb] == list(range(1, a["epoch"] + 1))
    for x, y in zip(ra, rb, strict=True):
        for field in ("loss", "lr", "top1", "many", "medium", "few"):
            assert close(x[field], y[field]), (field, x[field], y[field])
    results = [json.loads((d / "results.json").read_text()) for d in (a_dir, b_dir)]
    for part in ("best", "final"):
        for field in ("epoch", "top1", "many", "medium", "few"):
            assert close(results[0][part][field], results[1][part][field]), (part, field)
    return a, b


def killed_run(argv: list[str], run_dir: Path, after_epoch: int = 1) -> None:
    """`python launch.py *argv` killed with SIGKILL as soon as its checkpoint of `after_epoch` is on disk
    (nothing runs on exit: what a crash or a preempted node leaves behind for `--resume`). The process runs
    one torch thread, as the `one_thread` fixture gives the runs it is compared with."""
    from trainer import checkpoint

    path = checkpoint.checkpoint_path(run_dir, after_epoch)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "launch.py"), *argv],
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            while not path.exists():
                if proc.poll() is not None:
                    err.seek(0)
                    raise AssertionError(err.read().decode()[-3000:])
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not (run_dir / "results.json").exists(), "the run finished before it was killed"


def slurm_dry_run(*argv: str, **env: str | None) -> list[tuple[str, list[str]]]:
    """What tools/slurm/train.sbatch would run, under `DRY_RUN=1`: (node label, command as argv) per node.
    `env` overrides the environment; a None value removes the variable."""
    full = {**os.environ, "DRY_RUN": "1"}
    for key, value in env.items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    out = subprocess.run(
        ["bash", "tools/slurm/train.sbatch", *argv],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [(label, shlex.split(cmd)) for label, cmd in (line.split(": ", 1) for line in out)]


def free_port() -> int:
    """A TCP port nobody listens on now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker: Callable[..., Any], world: int, *args: Any) -> list[Any]:
    """`worker(rank, world, *args)` in `world` spawned processes joined in one gloo process group (one torch
    thread each); returns what each rank's call returned, in rank order. `worker` must be a module-level
    function (the processes import it) and its result picklable by `torch.save`."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_rank, args=(world, free_port(), out, worker, args), nprocs=world, join=True)
        return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _rank(rank: int, world: int, port: int, out: str, worker: Callable[..., Any], args: tuple) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(worker(rank, world, *args), Path(out) / f"rank{rank}.pt")
        # no rank tears its group down while another's last collective may still be finishing on it: a
        # rank that did aborted ("terminate called without an active exception") about once in 12 runs
        dist.barrier()
    finally:
        dist.destroy_process_group()


def loss_output(n=8, c=5, d=6, e=4, seed=0, dtype=torch.float32) -> tuple[ModelOutput, torch.Tensor]:
    """A random ModelOutput (features, cosines in [-0.9, 0.9], 2n BCL embeddings, c centres) and targets,
    every tensor a leaf that requires grad."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    logits = (torch.rand(n, c, generator=g, dtype=dtype) * 1.8 - 0.9).requires_grad_()
    embeddings = F.normalize(torch.randn(2 * n, e, generator=g, dtype=dtype), dim=1).requires_grad_()
    centers = F.normalize(torch.randn(c, e, generator=g, dtype=dtype), dim=1).requires_grad_()
    target = torch.randint(0, c, (n,), generator=g)
    return ModelOutput(features, logits, embeddings, centers), target


def gml_output(n=8, c=5, d=6, per_class=3, seed=0, dtype=torch.float32) -> tuple[MoCoOutput, torch.Tensor]:
    """A random MoCoOutput (GML's student): cosines as in `loss_output`, a queue of `per_class` keys per class
    with query i's own key in slot i, teacher cosines, T_c = 0.1; float tensors are leaves requiring grad."""
    g = torch.Generator().manual_seed(seed)
    k = c * per_class
    features = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    logits = (torch.rand(n, c, generator=g, dtype=dtype) * 1.8 - 0.9).requires_grad_()
    similarities = (torch.rand(n, k, generator=g, dtype=dtype) * 2 - 1).requires_grad_()
    sizes = torch.full((c,), per_class, dtype=torch.long)
    own = torch.arange(n).unsqueeze(1) == torch.arange(k).unsqueeze(0)
    temperature = torch.tensor(0.1, dtype=dtype).requires_grad_()
    teacher = torch.rand(n, c, generator=g, dtype=dtype) * 1.8 - 0.9
    target = torch.randint(0, c, (n,), generator=g)
    return MoCoOutput(features, logits, similarities, sizes, own, temperature, teacher), target


def output_for(name: str, **kw) -> tuple[ModelOutput | MoCoOutput, torch.Tensor]:
    """Random inputs for the registered loss `name`, of the kind its model (`model` attribute) returns."""
    make = {"classifier": loss_output, "gml_student": gml_output}[loss_class(name).model]
    return make(**kw)


def interrupted_run(argv: list[str], monkeypatch) -> None:
    """`launch.main(argv)` killed at the start of its second epoch (a KeyboardInterrupt raised where the epoch
    would train): what a resume test continues from its epoch-1 checkpoint."""
    import pytest

    import launch
    from trainer import loop

    real = loop.train_one_epoch
    calls = {"n": 0}

    def dies_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", dies_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        launch.main(argv)
    monkeypatch.setattr(loop, "train_one_epoch", real)


def launch_failure(argv: list[str]) -> tuple[int, str]:
    """Run `python launch.py *argv` as a user would; its exit code and the last line of its stderr, after
    checking that it printed no traceback (an error a user meets is one line)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.returncode, proc.stderr.strip().splitlines()[-1]


# A CPU twin of an asynchronous device and its events, for the host-lead rings (training, evaluation, the GPU
# check's meter).
class ThreadDevice:
    """Runs submitted work in order on a worker thread: an asynchronous device that is slower than the
    host. `done` counts finished items."""

    def __init__(self) -> None:
        self.submitted = 0
        self.done = 0
        self.cond = threading.Condition()
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._work, daemon=True).start()

    def submit(self, fn) -> int:
        index = self.submitted
        self.submitted += 1
        self.queue.put((index, fn))
        return index

    def _work(self) -> None:
        while True:
            index, fn = self.queue.get()
            fn()
            with self.cond:
                self.done = index + 1
                self.cond.notify_all()


class ThreadEvent:
    """record / query / synchronize, ordered with the device's work like a CUDA event on a stream."""

    def __init__(self, device: ThreadDevice) -> None:
        self.device = device
        self.mark: int | None = None

    def record(self) -> None:
        self.mark = self.device.submit(lambda: None)

    def query(self) -> bool:
        return self.mark is None or self.device.done > self.mark

    def synchronize(self) -> None:
        with self.device.cond:
            self.device.cond.wait_for(self.query)
