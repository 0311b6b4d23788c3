"""The training step (forward, loss, backward, optimizer update, metric accumulation), how it executes, and
the eval step.

`TrainStep` owns the model, loss, optimizer and device-side accumulators; a runner per `StepConfig.mode`
(`RUNNERS`: eager, compiled, or compiled and captured as CUDA graphs) owns how a step executes: the compiled
callables and the captured graphs. Invariant: nothing in the step reads a tensor on the host. The learning
rate is the optimizer's 0-dim tensor, the loss's epoch state lives in its buffers, the loss sum and
per-class counts accumulate on the device until `read_metrics()`, and a checkpoint load copies into the
same tensors (`trainer.optim.SGD.load_state_dict`), so a captured graph stays valid.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from losses import ModelOutput
from trainer.config import StepConfig
from trainer.metrics import ClassAccumulator, accuracy_report
from trainer.optim import SGD

LossFn = Callable[[Any, Tensor], Tensor]  # (model output, labels) -> the 0-dim loss

log = logging.getLogger(__name__)

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
    """Plain PyTorch over the step's callables: `model(images, labels)`, `loss_and_metrics(output, labels)`
    and the optimizer; the compiled runners swap in compiled versions of the model and the two functions."""

    def __init__(
        self,
        model: nn.Module,
        loss_and_metrics: LossFn,
        optimizer: SGD,
        cfg: StepConfig,
        *,
        dtype: torch.dtype | None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.device, self.dtype = optimizer.lr.device, dtype
        self.loss_and_metrics = loss_and_metrics
        self.optimizer_step = optimizer.step

    def forward_loss(self, images: Tensor, labels: Tensor) -> Tensor:
        with autocast(self.device, self.dtype):
            output = self.model(images, labels)  # every model takes the labels (GML's queue reads them)
        return self.loss_and_metrics(output, labels)  # outside autocast: the model hands over fp32

    def run(self, images: Tensor, labels: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.forward_loss(images, labels).backward()
        self.optimizer_step()

    def warm_up(self, images: Tensor, labels: Tensor) -> None:
        """Whatever makes the next real step fast (compile: one step compiles every graph)."""
        self.run(images, labels)


class CompiledRunner(EagerRunner):
    """`eager`, with the model compiled in place (`nn.Module.compile`: state_dict keys stay clean; under DDP
    the wrapper is compiled, so Dynamo's DDP optimizer splits the graph at bucket boundaries and the
    all-reduce overlaps the backward) and the loss + metric update and the optimizer update compiled as
    fullgraph functions. Everything uses `dynamic=False`."""

    def __init__(
        self,
        model: nn.Module,
        loss_and_metrics: LossFn,
        optimizer: SGD,
        cfg: StepConfig,
        *,
        dtype: torch.dtype | None,
        compile_mode: str | None = None,
    ) -> None:
        super().__init__(model, loss_and_metrics, optimizer, cfg, dtype=dtype)
        mode = compile_mode or cfg.compile_mode
        compile_module(model, cfg, mode)  # the DDP wrapper if there is one: the all-reduce overlaps
        self.loss_and_metrics = torch.compile(loss_and_metrics, **compile_kwargs(cfg, mode, True))
        # The optimizer's foreach update fuses into a few kernels; lr is a tensor input, never a constant.
        self.optimizer_step = torch.compile(optimizer.step, **compile_kwargs(cfg, "default", True))


class _Captured:
    """Static input buffers and, once warmed up, the graph of one input shape."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images = torch.empty_like(images, memory_format=torch.preserve_format)
        self.labels = torch.empty_like(labels)
        self.warm = 0
        self.graph: torch.cuda.CUDAGraph | None = None


class GraphRunner(CompiledRunner):
    """`compile`, then the whole step captured as one CUDA graph per input shape: static uint8 image and
    label buffers, `graph_warmup` steps on a side stream first (compiles, allocates grads and cuBLAS
    workspaces; >= 11 under DDP), gradients zeroed in place inside the graph (they live outside the graph
    pool, so graphs for several shapes can share one pool), then replay. A CUDA-graph compile mode cannot
    nest in the capture, so `reduce-overhead` / `max-autotune` become their no-cudagraph variants."""

    def __init__(
        self,
        model: nn.Module,
        loss_and_metrics: LossFn,
        optimizer: SGD,
        cfg: StepConfig,
        *,
        dtype: torch.dtype | None,
    ) -> None:
        mode = module_compile_mode(cfg, "graph")
        if mode != cfg.compile_mode:
            log.warning(
                "step.compile_mode=%s uses CUDA graphs, which cannot nest in the step's capture; using %s",
                cfg.compile_mode,
                mode,
            )
        super().__init__(model, loss_and_metrics, optimizer, cfg, dtype=dtype, compile_mode=mode)
        ddp = isinstance(model, DistributedDataParallel)
        # DDP needs at least 11 eager iterations before capture (PyTorch's CUDA-graph notes, "Usage with
        # DistributedDataParallel"): its buckets are rebuilt after the first ones.
        self.warmup = max(1, cfg.graph_warmup, 11 if ddp else 0)
        self.graphs: dict[tuple[Any, ...], _Captured] = {}
        self.pool: Any = None

    def body(self, images: Tensor, labels: Tensor) -> None:
        self.optimizer.zero_grad_()  # in place: grads keep their (non-pool) memory
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
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.body(cap.images, cap.labels)
        torch.cuda.current_stream(self.device).wait_stream(side)
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


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP (or DataParallel) wrapper."""
    return model.module if isinstance(model, DistributedDataParallel | nn.DataParallel) else model


class TrainStep:
    """One optimisation step per call: its runner (`RUNNERS[cfg.mode]`) executes it.

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
        self.runner = RUNNERS[self.mode](model, self.loss_and_metrics, optimizer, cfg, dtype=self.dtype)

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
        tensor back in place, with the random generators: the run is unchanged and its first real step is
        already a replay. Call it before the loaders start their threads (a DALI or nvJPEG allocation on
        another thread during a capture invalidates it), and again after nothing: a checkpoint load copies
        into the same tensors. A collective under DDP: every rank calls it."""
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
    """Accumulates argmax(logits) against labels per class; `read_metrics()` reports and resets.

    It runs the unwrapped model (no DDP: ranks may see different numbers of eval batches, and DDP's forward
    would broadcast buffers, a collective) under no_grad, compiled but never captured. The last, partial
    batch gets its own compiled graph (one extra compile per eval set size, cached across epochs) instead
    of padding and masking. Many / medium / few are against the training class counts it was built with.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: StepConfig,
        class_counts: Sequence[int],
        views: Mapping[str, Callable[[Any], Tensor]] | None = None,
    ) -> None:
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
        # Adjusted predictions (trainer/posthoc.py) counted beside the plain argmax, on the device.
        self.views = dict(views or {})
        self.view_metrics = {
            name: ClassAccumulator(len(self.class_counts), self.device) for name in self.views
        }

    @torch.no_grad()
    def __call__(self, images: Tensor, labels: Tensor) -> None:
        if self.module.training:
            self.module.eval()
        with autocast(self.device, self.dtype):
            output = self.forward(images)
        self.metrics.update(output.logits, labels)
        for name, view in self.views.items():
            self.view_metrics[name].update(view(output), labels)

    def read_metrics(self) -> dict[str, Any]:
        """Host sync (a collective under DDP): top1, many/medium/few, per_class, samples, and each view's
        report (without per_class) under its name; then resets."""
        r = self.metrics.read()
        self.metrics.reset()
        report = accuracy_report(r["count"], r["correct"], self.class_counts)
        for name, metrics in self.view_metrics.items():
            v = metrics.read()
            metrics.reset()
            adjusted = accuracy_report(v["count"], v["correct"], self.class_counts)
            report[name] = {k: adjusted[k] for k in ("top1", "many", "medium", "few")}
        return report
