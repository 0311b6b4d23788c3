"""Synchronised BatchNorm: under DDP, every BatchNorm's training statistics are those of the global batch.

`convert_sync_bn(model)` swaps each `BatchNorm{1,2,3}d` for a `SyncBatchNorm` sharing its parameters and
buffers: torch's BatchNorm to the bit in one process; under N processes, per-rank (count, mean, centred sum
of squares) gathered with gradient (`losses.distributed.gather_rows`) and combined by Chan's parallel formula,
so output, running statistics and input gradients equal plain BatchNorm on the concatenated batch.
Not `torch.nn.SyncBatchNorm`: it rejects CPU tensors and, uncaptured, drops empty ranks with a boolean mask
(a host sync per layer); this one is traceable ops and functional collectives, so the step never waits.
A subtree whose root has `sync_bn = False` is left alone (BCL's `head_fc`: replicated rows, nothing to sync).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from losses.distributed import batch_group, gather_rows


def sync_batch_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    factor: float | Tensor,
    eps: float,
    group: dist.ProcessGroup,
) -> Tensor:
    """Training-mode batch norm over the union of every rank's `x` (N x C x ...), computed in float32 at
    least (bf16 activations under autocast are upcast, as cuDNN's batch norm accumulates in float32).

    `factor` is the running-statistics update weight (the module's momentum, or 1 / num_batches_tracked).
    The running buffers, if given, are updated in place with the global mean and unbiased variance.
    """
    channels = x.shape[1]
    dims = [0, *range(2, x.dim())]
    shape = [1, channels] + [1] * (x.dim() - 2)
    xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
    local_mean = xf.mean(dim=dims)
    local_m2 = (xf - local_mean.view(shape)).square().sum(dim=dims)
    local_count = xf.new_full((1,), x.numel() // channels)
    stats = gather_rows(torch.cat([local_mean, local_m2, local_count]).unsqueeze(0), group)  # W x (2C + 1)
    means, m2s, counts = stats[:, :channels], stats[:, channels:-1], stats[:, -1:]
    total = counts.sum()
    mean = (counts * means).sum(dim=0) / total
    m2 = (m2s + counts * (means - mean).square()).sum(dim=0)  # Chan et al.'s parallel combination
    var = m2 / total  # biased: what normalises the batch, as BatchNorm
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.lerp_(mean.detach().to(running_mean.dtype), factor)
            unbiased = m2.detach() / (total.detach() - 1).clamp(min=1)
            running_var.lerp_(unbiased.to(running_var.dtype), factor)
    out = (xf - mean.view(shape)) * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        out = out * weight.to(xf.dtype).view(shape)
    if bias is not None:
        out = out + bias.to(xf.dtype).view(shape)
    return out.to(x.dtype)


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over the global batch under an initialised process group; torch's BatchNorm otherwise."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects at least 2-D input (N x C x ...), got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        group = batch_group()
        if group is None or not self.training:
            return super().forward(x)  # one process, or eval: exactly torch's BatchNorm
        self._check_input_dim(x)
        factor: float | Tensor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, without reading the count on the host
                factor = 1.0 / self.num_batches_tracked.to(torch.float32)
        running = self.track_running_stats
        return sync_batch_norm(
            x,
            self.weight,
            self.bias,
            self.running_mean if running else None,
            self.running_var if running else None,
            factor,
            self.eps,
            group,
        )


def convert_sync_bn(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm (1d/2d/3d) replaced by a `SyncBatchNorm` sharing its parameters and
    buffers (so call it before building the optimizer, or keep using the same Parameter objects); subtrees
    whose root has `sync_bn = False` are kept. Returns the converted module (a new one if `module` itself
    is a BatchNorm)."""
    if getattr(module, "sync_bn", True) is False:
        return module
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm | nn.SyncBatchNorm):
        sync = SyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        if module.affine:
            sync.weight, sync.bias = module.weight, module.bias
        sync.running_mean, sync.running_var = module.running_mean, module.running_var
        sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        converted = convert_sync_bn(child)
        if converted is not child:
            module.add_module(name, converted)
    return module
