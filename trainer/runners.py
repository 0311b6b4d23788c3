"""How a training step executes, one runner per `StepConfig.mode` (the registry `RUNNERS`): eager, compiled,
or compiled and captured as CUDA graphs; and the precision and compile settings they share with evaluation.
See trainer/step.py for the modes and what the step guarantees.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from trainer.config import StepConfig

if TYPE_CHECKING:
    from trainer.step import TrainStep

log = logging.getLogger("trainer.step")

# Compile modes that use CUDA graphs themselves, and what they become inside a manual capture.
_NO_CUDAGRAPHS = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}


def resolve_mode(mode: str, device: torch.device) -> str:
    if mode == "graph" and device.type != "cuda":
        log.info("step.mode=graph needs a CUDA device; falling back to compile on %s", device)
        return "compile"
    return mode


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA and fp32 on a CPU for "auto" (`StepConfig.precision`); None means no autocast."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    # cache_enabled=False: the weight-cast cache is not allowed under graph capture (and ResNets use each
    # weight once per forward, so it saves nothing).
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def module_compile_mode(cfg: StepConfig, mode: str) -> str:
    """The torch.compile mode for a step mode: no CUDA-graph compile mode inside a manual capture."""
    return _NO_CUDAGRAPHS.get(cfg.compile_mode, cfg.compile_mode) if mode == "graph" else cfg.compile_mode


def compile_kwargs(cfg: StepConfig, mode: str, fullgraph: bool = False) -> dict[str, Any]:
    """torch.compile arguments: static shapes; `mode` applies to Inductor only."""
    kwargs: dict[str, Any] = {"backend": cfg.compile_backend, "dynamic": False, "fullgraph": fullgraph}
    if cfg.compile_backend == "inductor":
        kwargs["mode"] = mode
    return kwargs


def is_compiled(module: nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def compile_module(module: nn.Module, cfg: StepConfig, mode: str) -> None:
    """Compile `module` in place once."""
    if not is_compiled(module):
        module.compile(**compile_kwargs(cfg, mode))


class EagerRunner:
    """Plain PyTorch; the compiled runners swap in compiled versions of the two callables it holds."""

    def __init__(self, step: TrainStep, cfg: StepConfig) -> None:
        self.step = step
        self.loss_and_metrics = step.loss_and_metrics
        self.optimizer_step = step.optimizer.step

    def forward_loss(self, images: Tensor, labels: Tensor) -> Tensor:
        with autocast(self.step.device, self.step.dtype):
            output = self.step.model(images, labels)  # every model takes the labels (GML's queue reads them)
        return self.loss_and_metrics(output, labels)  # outside autocast: the model hands over fp32

    def run(self, images: Tensor, labels: Tensor) -> None:
        self.step.optimizer.zero_grad(set_to_none=True)
        self.forward_loss(images, labels).backward()
        self.optimizer_step()

    def warm_up(self, images: Tensor, labels: Tensor) -> None:
        """Whatever makes the next real step fast (compile: one step compiles every graph)."""
        self.run(images, labels)


class CompiledRunner(EagerRunner):
    def __init__(self, step: TrainStep, cfg: StepConfig, compile_mode: str | None = None) -> None:
        super().__init__(step, cfg)
        mode = compile_mode or cfg.compile_mode
        compile_module(step.model, cfg, mode)  # the DDP wrapper if there is one: the all-reduce overlaps
        self.loss_and_metrics = torch.compile(step.loss_and_metrics, **compile_kwargs(cfg, mode, True))
        # The optimizer's foreach update fuses into a few kernels; lr is a tensor input, never a constant.
        self.optimizer_step = torch.compile(step.optimizer.step, **compile_kwargs(cfg, "default", True))


class _Captured:
    """Static input buffers and, once warmed up, the graph of one input shape."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images = torch.empty_like(images, memory_format=torch.preserve_format)
        self.labels = torch.empty_like(labels)
        self.warm = 0
        self.graph: torch.cuda.CUDAGraph | None = None


class GraphRunner(CompiledRunner):
    def __init__(self, step: TrainStep, cfg: StepConfig) -> None:
        mode = module_compile_mode(cfg, "graph")
        if mode != cfg.compile_mode:
            log.warning(
                "step.compile_mode=%s uses CUDA graphs, which cannot nest in the step's capture; using %s",
                cfg.compile_mode,
                mode,
            )
        super().__init__(step, cfg, compile_mode=mode)
        ddp = isinstance(step.model, DistributedDataParallel)
        # DDP needs at least 11 eager iterations before capture (PyTorch's CUDA-graph notes, "Usage with
        # DistributedDataParallel"): its buckets are rebuilt after the first ones.
        self.warmup = max(1, cfg.graph_warmup, 11 if ddp else 0)
        self.graphs: dict[tuple[Any, ...], _Captured] = {}
        self.pool: Any = None

    def body(self, images: Tensor, labels: Tensor) -> None:
        self.step.optimizer.zero_grad_()  # in place: grads keep their (non-pool) memory
        self.forward_loss(images, labels).backward()
        self.optimizer_step()

    def _slot(self, images: Tensor, labels: Tensor) -> _Captured:
        """The static buffers (and graph) of this input shape, holding a copy of the batch."""
        key = (tuple(images.shape), images.dtype, images.stride(), tuple(labels.shape), labels.dtype)
        cap = self.graphs.get(key)
        if cap is None:
            cap = self.graphs[key] = _Captured(images, labels)
        cap.images.copy_(images, non_blocking=True)
        cap.labels.copy_(labels, non_blocking=True)
        return cap

    def warm_up(self, images: Tensor, labels: Tensor) -> None:
        cap = self._slot(images, labels)
        while cap.warm < self.warmup:
            self._warm(cap)
        if cap.graph is None:
            self._capture(cap)

    def run(self, images: Tensor, labels: Tensor) -> None:
        cap = self._slot(images, labels)
        if cap.graph is not None:
            cap.graph.replay()
        elif cap.warm < self.warmup:
            self._warm(cap)
        else:
            self._capture(cap)
            cap.graph.replay()  # capturing ran nothing: this batch's step

    def _warm(self, cap: _Captured) -> None:
        side = torch.cuda.Stream(self.step.device)
        side.wait_stream(torch.cuda.current_stream(self.step.device))
        with torch.cuda.stream(side):
            self.body(cap.images, cap.labels)
        torch.cuda.current_stream(self.step.device).wait_stream(side)
        cap.warm += 1

    def _capture(self, cap: _Captured) -> None:
        log.info("capturing the training step as a CUDA graph for images %s", tuple(cap.images.shape))
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA calls (a loader's) cannot invalidate this capture. A complement
        # to capturing before the loaders start (`TrainStep.prepare`), not a replacement: an allocation on
        # another thread during a global capture is what fails.
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            self.body(cap.images, cap.labels)
        if self.pool is None:
            self.pool = graph.pool()
        cap.graph = graph


RUNNERS: dict[str, type[EagerRunner]] = {
    "eager": EagerRunner,
    "compile": CompiledRunner,
    "graph": GraphRunner,
}
