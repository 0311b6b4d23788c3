"""The one wiring of a run's trainable parts: loss -> model -> optimizer -> training and evaluation steps.

launch.py, the step benchmark and the GPU check all call `build_parts`, so what they time or check is what a
run trains. Its invariant: every process starts from the same weights (and GML's and NCL's queues) and then
draws its own augmentations, and DDP is built where a CUDA-graph capture can use it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainer.config import Config
from trainer.optim import SGD
from trainer.step import EvalStep, TrainStep

log = logging.getLogger(__name__)


@dataclass
class Parts:
    """What `build_parts` returns: the model (as `prepare` returned it), loss, optimizer and steps."""

    model: nn.Module  # a DDP wrapper when `prepare` wrapped it
    loss: nn.Module  # a losses.Loss: set_epoch(epoch, epochs) before each epoch's steps
    optimizer: SGD  # its param groups share the step's lr tensor
    train_step: TrainStep
    eval_step: EvalStep


def check_parts(cfg: Config, *, world_size: int) -> None:
    """A ConfigError when the model the loss needs cannot fit the [model] section or the global batch: what
    `build_parts` checks first, and what launch.py checks before it opens any data."""
    from losses import loss_class
    from trainer.models import check_model

    check_model(cfg.model, loss_class(cfg.loss.name), batch_size=cfg.data.batch_size, world_size=world_size)


def build_parts(
    cfg: Config,
    meta: Any,
    *,
    device: torch.device | str,
    world_size: int = 1,
    rank: int = 0,
    prepare: Callable[[nn.Module], nn.Module] = lambda m: m,
) -> Parts:
    """This process's parts for `cfg`, from `meta`'s `num_classes` and `class_counts` (the training split's).

    `prepare` places and wraps the model (launch.py: `accelerator.prepare`, which adds DDP on several
    processes); `rank` and `world_size` are this process's place in the job. `check_parts` runs first."""
    from accelerate.utils import set_seed

    import losses
    from trainer.models import build_model, rank_identical_buffers
    from trainer.optim import build_optimizer
    from trainer.posthoc import eval_views

    device = torch.device(device)
    if device.type == "cuda":
        # Shapes are static, so cuDNN's per-shape autotuning runs once. (TF32 matmuls stay off: the cosine
        # head is kept in fp32 on purpose, its raw cosines feed an arccos.)
        torch.backends.cudnn.benchmark = True
    check_parts(cfg, world_size=world_size)
    counts = tuple(meta.class_counts)
    loss = losses.build_loss(cfg.loss, counts).to(device)
    for level, line in loss.describe(counts):
        log.log(level, line)
    set_seed(cfg.run.seed)  # the same initial weights (and GML's and NCL's initial queues) on every process
    # The kind of model the loss names: a missing or mismatched GML teacher is a CheckpointError here.
    where = dict(num_classes=meta.num_classes, class_counts=counts, mean=cfg.data.mean, std=cfg.data.std)
    model = build_model(cfg.model, loss, **where).to(device)
    if cfg.model.sync_bn:
        from trainer.sync_bn import convert_sync_bn

        model = convert_sync_bn(model)  # before the optimizer: it keeps the parameters, swaps the modules
    # DDP broadcasts every buffer from rank 0 before each forward, which keeps per-rank BatchNorm statistics
    # consistent. Buffers every rank updates identically by construction (GML's and NCL's queues: each rank
    # enqueues every rank's keys) would cross the network for nothing, 128-512 MB a step at ImageNet-LT or
    # iNaturalist sizes: DDP leaves out the ones the model names, also from its initial broadcast (they start
    # equal, from the seed or from the checkpoint every rank loads).
    if same_everywhere := rank_identical_buffers(model):
        from torch.nn.parallel import DistributedDataParallel

        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, same_everywhere)
    optimizer = build_optimizer(model, cfg.optim)
    model = _prepare_on_side_stream(model, prepare, device) if cfg.step.mode == "graph" else prepare(model)
    set_seed(cfg.run.seed + rank)  # each process draws its own augmentations from here on
    return Parts(
        model=model,
        loss=loss,
        optimizer=optimizer,
        train_step=TrainStep(model, loss, optimizer, cfg.step),
        # Post-hoc adjusted predictions (`[eval]`), counted beside the plain ones.
        eval_step=EvalStep(model, cfg.step, counts, views=eval_views(cfg.eval, model, loss, counts)),
    )


def _prepare_on_side_stream(
    model: nn.Module, prepare: Callable[[nn.Module], nn.Module], device: torch.device
) -> nn.Module:
    """`prepare(model)` on a side stream, as a CUDA-graph capture of DDP's all-reduces needs. The side stream
    first waits for the default one (the weights written there are what DDP's initial broadcast reads), and
    the default stream then waits for the side one (the first step sees DDP's buffers)."""
    if device.type != "cuda":
        return prepare(model)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        model = prepare(model)
    torch.cuda.current_stream(device).wait_stream(side)
    return model
