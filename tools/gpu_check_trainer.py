"""The module of the GPU check that builds and drives the trainer's step (trainer/*, losses/*).

Every stage builds its steps through `build_step` and drives them through the returned `Trainer` handle,
so when the trainer's API changes this file is the one place to adapt (gpu_check_lead.py takes the loop's
host-lead ring, `trainer.lead`, as it is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipelines.config import IMAGENET_MEAN, IMAGENET_STD
from tools.longtail import imagenet_lt_counts


@dataclass
class Trainer:
    """A training step as the trainer builds it, plus the parts a check compares or restores."""

    step: Any  # trainer.step.TrainStep
    model: nn.Module  # possibly DDP-wrapped
    module: nn.Module  # the unwrapped model
    loss: nn.Module
    optimizer: torch.optim.Optimizer

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.step(images, labels)

    @property
    def mode(self) -> str:
        """The effective step mode ("graph" falls back to "compile" without CUDA)."""
        return self.step.mode

    def set_lr(self, value: float) -> None:
        self.step.set_lr(value)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.loss.set_epoch(epoch, epochs)

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
) -> Trainer:
    """Model, loss and optimizer as launch.py builds them (same init for every mode thanks to the seed),
    wrapped in DDP when asked (the process group must exist), and the TrainStep for `mode`."""
    from losses import build_loss
    from trainer.config import ModelConfig, OptimConfig, StepConfig
    from trainer.models import build_model
    from trainer.optim import build_optimizer
    from trainer.step import TrainStep

    torch.manual_seed(seed)
    counts = imagenet_lt_counts(num_classes)
    loss_fn = build_loss(loss, counts).to(device)
    module = build_model(
        ModelConfig(arch=arch),
        loss_fn,
        num_classes=num_classes,
        class_counts=counts,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ).to(device)
    optimizer = build_optimizer(module, OptimConfig(lr=0.1, weight_decay=5e-4))
    model: nn.Module = module
    if ddp:
        model = _ddp(module, device)
    cfg = StepConfig(
        mode=mode,
        precision=precision,
        compile_mode=compile_mode,
        compile_backend=compile_backend,
        graph_warmup=graph_warmup,
    )
    step = TrainStep(model, loss_fn, optimizer, cfg)
    return Trainer(step, model, module, loss_fn, optimizer)


def _ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """DDP as launch.py gets it from Accelerate: built on a side stream on CUDA (required to capture its
    all-reduces into a graph), default buckets, `broadcast_buffers=True`."""
    from torch.nn.parallel import DistributedDataParallel

    if device.type != "cuda":
        return DistributedDataParallel(module)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        model = DistributedDataParallel(module, device_ids=[device.index or 0])
    torch.cuda.current_stream(device).wait_stream(side)
    return model
