"""The collectives a loss needs when its batch is split over processes (DDP): gathers that keep autograd.

A loss that couples a batch's samples (BCL's BalSCL) must see the global batch to compute what one process
would. `batch_group()` says whether (and over which group) the batch is split; `gather_rows` stacks every
rank's rows in rank order with a gradient that flows back to the owner. Built on the traceable functional
collectives (names resolved by `losses.compat`): dynamo compiles them without a graph break, they run on
gloo or NCCL, and a CUDA-graph capture records them like any kernel.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor


def batch_group() -> dist.ProcessGroup | None:
    """The default group when torch.distributed is initialised with more than one process, else None.

    None means one process holds the whole batch: callers then run no collective at all. Under
    torch.compile these calls are evaluated at trace time (they are constants of a run).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return dist.group.WORLD


def rank_and_size(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """This process's rank in `group` and the group's size; (0, 1) for None (one process)."""
    return (0, 1) if group is None else (dist.get_rank(group), dist.get_world_size(group))


def gather_rows(x: Tensor, group: dist.ProcessGroup) -> Tensor:
    """Every rank's `x` (the same shape on every rank) concatenated along dim 0 in rank order.

    Differentiable: the backward is a reduce-scatter (sum), so the gradient reaching rank r's `x` is the sum
    over all ranks of the gradients of their copies of it. With each rank's loss being its share of a
    global mean, that sum is world_size x the gradient of the global mean, and DDP's averaging of the
    parameter gradients then gives exactly the one-process gradient.
    """
    from losses import compat

    return compat.all_gather_single_autograd(x.contiguous(), gather_dim=0, group=group)


def gather_values(x: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """`gather_rows` for tensors without gradient (labels, MoCo keys): every rank's `x` along dim 0, in rank
    order; `x` itself for group None (one process). Every rank gets the same result, so a queue each rank
    fills with it stays identical on all."""
    if group is None:
        return x
    from losses import compat

    return compat.wait_tensor(compat.all_gather_single(x.contiguous(), gather_dim=0, group=group))
