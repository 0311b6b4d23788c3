"""The module of the GPU check that builds and drives the trainer's step.

Every stage builds its steps through `build_step`, which calls `trainer.build.build_parts` (what launch.py
calls), so the check proves the shipped wiring; stages drive them through the returned `Trainer` handle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tools.longtail import imagenet_lt_meta
from trainer.build import Parts


@dataclass
class Trainer:
    """A run's parts as `build_parts` makes them, with what a check drives, compares or restores."""

    parts: Parts

    @property
    def step(self):  # trainer.step.TrainStep
        return self.parts.train_step

    @property
    def module(self) -> nn.Module:
        """The model without its DDP wrapper."""
        from trainer.step import unwrap

        return unwrap(self.parts.model)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.step(images, labels)

    @property
    def mode(self) -> str:
        """The effective step mode ("graph" falls back to "compile" without CUDA)."""
        return self.step.mode

    def set_lr(self, value: float) -> None:
        self.step.set_lr(value)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.parts.loss.set_epoch(epoch, epochs)

    def read_loss(self) -> float | None:
        """Host sync: mean loss since the last read (resets the accumulators)."""
        return self.step.read_metrics()["loss"]

    def captured(self) -> int:
        """How many CUDA graphs the step holds (0 outside graph mode)."""
        graphs = getattr(self.step.runner, "graphs", {})
        return sum(1 for cap in graphs.values() if cap.graph is not None)

    def parameters(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.module.state_dict().items() if v.is_floating_point()}


def build_step(
    arch: str,
    num_classes: int,
    mode: str,
    device: torch.device,
    *,
    loss: str = "ce",
    precision: str = "bf16",
    compile_mode: str = "default",
    compile_backend: str = "inductor",
    graph_warmup: int = 3,
    ddp: bool = False,
    seed: int = 0,
    batch_size: int = 256,
) -> Trainer:
    """A run's parts for this model, loss and step mode (seeded: the same initial weights for every mode),
    with DDP on a one-process group when asked (the group must exist)."""
    from losses import LossConfig
    from pipelines import DataConfig
    from trainer.build import build_parts
    from trainer.config import Config, ModelConfig, OptimConfig, RunConfig, StepConfig

    cfg = Config(
        run=RunConfig(seed=seed),
        data=DataConfig(batch_size=batch_size),
        model=ModelConfig(arch=arch),
        loss=LossConfig(name=loss),
        optim=OptimConfig(lr=0.1, weight_decay=5e-4),
        step=StepConfig(
            mode=mode,
            precision=precision,
            compile_mode=compile_mode,
            compile_backend=compile_backend,
            graph_warmup=graph_warmup,
        ),
    )
    prepare = _ddp(device) if ddp else (lambda m: m)
    return Trainer(build_parts(cfg, imagenet_lt_meta(num_classes), device=device, prepare=prepare))


def _ddp(device: torch.device) -> Callable[[nn.Module], nn.Module]:
    """DDP as Accelerate wraps the model in launch.py: default buckets, `broadcast_buffers=True`."""
    from torch.nn.parallel import DistributedDataParallel

    if device.type != "cuda":
        return DistributedDataParallel
    return lambda module: DistributedDataParallel(module, device_ids=[device.index or 0])
