"""Helpers shared by several test files (imported as `from tests.helpers import ...`)."""

from __future__ import annotations

import socket
from pathlib import Path

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


def free_port() -> int:
    """A TCP port nobody listens on now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
