"""The training step (forward, loss, backward, optimizer update, metric accumulation) and the eval step.

Modes (`StepConfig.mode`, registry `RUNNERS`):
* `eager`: plain PyTorch.
* `compile`: the model is compiled in place (`nn.Module.compile`, so state_dict keys stay clean; under DDP
  the DDP wrapper is what gets compiled, so Dynamo's DDP optimizer splits the graph at bucket boundaries and
  the gradient all-reduce overlaps the backward), the loss + metric update and the optimizer update are
  compiled functions (fullgraph); backward runs the compiled backward graph. Everything uses `dynamic=False`.
* `graph`: `compile`, then the whole step is captured as one CUDA graph per input shape (spec/pipelines.md
  §5.3): static uint8 image and label buffers, `graph_warmup` steps on a side stream first (compiles,
  allocates grads and cuBLAS workspaces; >= 11 under DDP), gradients zeroed in place inside the graph (they
  live outside the graph pool, so graphs for several shapes can share one pool), then replay. A CUDA-graph
  compile mode inside a manual capture is not allowed, so `reduce-overhead` / `max-autotune` become their
  no-cudagraph variants. Without CUDA, `graph` falls back to `compile` (logged).

`TrainStep.prepare(images, labels)` does the compiling, warm-up and capture on a synthetic batch of the
training shape before any loader thread exists (a DALI or nvJPEG allocation on another thread during a
capture invalidates it), then puts every tensor it touched back: the run is unchanged and its first real
step is already a replay.

Nothing in the step reads a tensor on the host: the learning rate is the optimizer's 0-dim tensor (the loop
calls `lr.fill_(v)`), the loss's epoch state lives in its buffers, and the loss sum and per-class counts
accumulate on the device until `read_metrics()`. A checkpoint load copies into the same tensors (parameters,
buffers, and the optimizer's state: `trainer.optim.SGD.load_state_dict`), so a captured graph stays valid.

The step owns the model, loss, optimizer and accumulators; its runner (one per mode, `RUNNERS`) owns how a
step executes: the compiled callables and the captured graphs.

Evaluation (`EvalStep`) runs the unwrapped model (no DDP: ranks may see different numbers of eval batches
and DDP's forward would broadcast buffers, a collective), under no_grad, compiled but never captured. The
last, partial batch gets its own compiled graph (dynamic=False: one extra compile per eval set size,
cached across epochs) instead of padding and masking. It reports many / medium / few against the training
class counts it was built with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from losses import ModelOutput
from trainer.config import StepConfig
from trainer.metrics import ClassAccumulator, accuracy_report
from trainer.optim import SGD
from trainer.runners import (
    RUNNERS,
    CompiledRunner,
    EagerRunner,
    GraphRunner,
    autocast,
    autocast_dtype,
    compile_kwargs,
    is_compiled,
    module_compile_mode,
    resolve_mode,
)

__all__ = [
    "RUNNERS",
    "CompiledRunner",
    "EagerRunner",
    "EvalStep",
    "GraphRunner",
    "TrainStep",
    "autocast_dtype",
    "unwrap",
]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP (or DataParallel) wrapper."""
    return model.module if isinstance(model, DistributedDataParallel | nn.DataParallel) else model


class TrainStep:
    """One optimisation step per call; see the module docstring for the modes.

    `optimizer` is a `trainer.optim.SGD`: its 0-dim `lr` tensor is what `set_lr` writes, and it lives on
    the device the step runs on."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optimizer: SGD, cfg: StepConfig) -> None:
        self.model = model  # possibly a DDP wrapper: its forward all-reduces gradients in backward
        self.module = unwrap(model)
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.device = optimizer.lr.device
        self.dtype = autocast_dtype(cfg.precision, self.device)
        self.metrics = ClassAccumulator(loss_fn.num_classes, self.device)
        self.mode = resolve_mode(cfg.mode, self.device)
        self.runner = RUNNERS[self.mode](self, cfg)

    def loss_and_metrics(self, output: ModelOutput, labels: Tensor) -> Tensor:
        """The loss, and the device-side accumulators updated with it (what the compiled runners compile)."""
        loss = self.loss_fn(output, labels)
        self.metrics.add_loss(loss)
        self.metrics.update(output.logits.detach(), labels)  # train accuracy on (augmented) view 0
        return loss

    def __call__(self, images: Tensor, labels: Tensor) -> None:
        if not self.module.training:
            self.model.train()
        self.runner.run(images, labels)

    def set_lr(self, value: float) -> None:
        self.optimizer.lr.fill_(value)  # an async device write: no sync, no recompile, no recapture

    def state_tensors(self) -> list[Tensor]:
        """Every tensor a step writes: parameters, buffers (BatchNorm statistics, queues), the loss's epoch
        buffers, the optimizer's state and learning rate."""
        optimizer_state = (v for s in self.optimizer.state.values() for v in s.values() if torch.is_tensor(v))
        every = (
            *self.module.parameters(),
            *self.module.buffers(),
            *self.loss_fn.buffers(),
            *optimizer_state,
            self.optimizer.lr,
        )
        return list({id(t): t for t in every}.values())

    def prepare(self, images: Tensor, labels: Tensor) -> None:
        """Compile (compile) or warm up and capture (graph) on a batch of the training shape, then put every
        tensor back in place, with the random generators: the run is unchanged. Call it before the loaders
        start their threads (and again after nothing: a checkpoint load copies into the same tensors). A
        collective under DDP: every rank calls it."""
        if self.mode == "eager":
            return
        saved = [(t, t.detach().clone()) for t in self.state_tensors()]
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None
        if not self.module.training:
            self.model.train()
        self.runner.warm_up(images, labels)
        with torch.no_grad():
            for tensor, value in saved:
                tensor.copy_(value)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        self.metrics.reset()

    def read_metrics(self, per_class: bool = False) -> dict[str, Any]:
        """Host sync (a collective under DDP: call on every rank): loss mean over the steps since the last
        read, samples, steps and train top-1 of view 0; `class_counts` per class if asked. Resets."""
        r = self.metrics.read()
        self.metrics.reset()
        samples = sum(r["count"])
        out: dict[str, Any] = {
            "loss": r["loss_sum"] / r["steps"] if r["steps"] else None,
            "samples": int(samples),
            "steps": int(r["steps"]),
            "top1": sum(r["correct"]) / samples if samples else None,
        }
        if per_class:
            out["class_counts"] = [int(c) for c in r["count"]]
        return out


class EvalStep:
    """Accumulates argmax(logits) against labels per class; `read_metrics()` reports and resets."""

    def __init__(self, model: nn.Module, cfg: StepConfig, class_counts: Sequence[int]) -> None:
        self.module = unwrap(model)
        self.class_counts = tuple(int(n) for n in class_counts)  # training counts: the shot groups
        self.device = next(self.module.parameters()).device
        self.dtype = autocast_dtype(cfg.precision, self.device)
        self.mode = resolve_mode(cfg.mode, self.device)
        self.forward: nn.Module | Any = self.module
        if self.mode != "eager" and not is_compiled(self.module):
            # Under DDP the training step compiled the wrapper: evaluation compiles the module on its own
            # (never captured; its shapes compile once each, cached across epochs).
            self.forward = torch.compile(
                self.module, **compile_kwargs(cfg, module_compile_mode(cfg, self.mode))
            )
        self.metrics = ClassAccumulator(len(self.class_counts), self.device)

    @torch.no_grad()
    def __call__(self, images: Tensor, labels: Tensor) -> None:
        if self.module.training:
            self.module.eval()
        with autocast(self.device, self.dtype):
            output = self.forward(images)
        self.metrics.update(output.logits, labels)

    def read_metrics(self) -> dict[str, Any]:
        """Host sync (a collective under DDP): top1, many/medium/few, per_class, samples; then resets."""
        r = self.metrics.read()
        self.metrics.reset()
        return accuracy_report(r["count"], r["correct"], self.class_counts)
