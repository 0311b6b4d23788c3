"""DBM-BCL under DDP with synchronised BatchNorm (trainer/sync_bn.py) and the global-batch BalSCL
(losses/bcl.py): two gloo processes, each holding half of a fixed 3-view batch, compute the gradients that
one process computes on the whole batch with plain BatchNorm, in eager and compiled steps."""

from __future__ import annotations

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from losses import build_loss
from tests.helpers import run_ranks
from trainer.config import ModelConfig
from trainer.models import build_classifier
from trainer.sync_bn import SyncBatchNorm, convert_sync_bn

pytestmark = pytest.mark.slow

WORLD, B, CLASSES = 2, 8, 5
COUNTS = [30, 12, 6, 3, 2]
MODES = ("eager", "compile")


def model(sync: bool):
    torch.manual_seed(0)
    m = build_classifier(
        ModelConfig(arch="resnet_tiny", channels_last=False, head_fp32=False),
        CLASSES,
        "cosine",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        views=3,
    ).double()  # float64 body and heads (the model hands fp32 outputs to the loss)
    return convert_sync_bn(m) if sync else m


def batch():
    """Three views of B images (view-major) and their labels."""
    g = torch.Generator().manual_seed(1)
    views = torch.randint(0, 256, (3, B, 3, 16, 16), dtype=torch.uint8, generator=g)
    target = torch.tensor([0, 0, 1, 2, 0, 1, 3, 4])
    return views, target


def rank_batch(rank, world):
    """This rank's images, stacked [v0; v1; v2] as the loader does, and its labels."""
    views, target = batch()
    b = B // world
    rows = slice(rank * b, (rank + 1) * b)
    return views[:, rows].reshape(-1, 3, 16, 16), target[rows]


def step(net, images, target, mode):
    """One training forward and backward: the loss value and the gradients by parameter name."""
    loss_fn = build_loss("dbm_bcl", COUNTS, scale=16.0)
    inner = getattr(net, "module", net)
    if mode == "compile":
        inner.compile(backend="aot_eager", dynamic=False)
        loss_fn = torch.compile(loss_fn, backend="aot_eager", dynamic=False)
    net.train()
    value = loss_fn(net(images), target)
    value.backward()
    grads = {k: p.grad.detach().clone() for k, p in inner.named_parameters()}
    stats = {k: v.detach().clone() for k, v in inner.state_dict().items() if "running" in k}
    return value.detach(), grads, stats


def _worker(rank, world):
    images, target = rank_batch(rank, world)
    results = {}
    for mode in MODES:
        net = model(sync=True)
        assert any(isinstance(m, SyncBatchNorm) for m in net.modules())
        results[mode] = step(DistributedDataParallel(net), images, target, mode)
    return results


@pytest.fixture(scope="module")
def rank_results():
    return run_ranks(_worker, WORLD)


@pytest.mark.parametrize("mode", MODES)
def test_ddp_gradients_and_statistics_equal_one_process(rank_results, mode):
    views, target = batch()
    value, grads, stats = step(model(sync=False), views.reshape(-1, 3, 16, 16), target, "eager")
    ranks = [r[mode] for r in rank_results]
    # float32 tolerances: the loss runs on the model's fp32 outputs
    torch.testing.assert_close(sum(r[0] for r in ranks) / WORLD, value, rtol=1e-6, atol=0)
    # DDP's averaged gradients (equal on both ranks after it); the absolute floor is relative to the largest
    # gradient, for the ~0 ones (a Linear bias before a BatchNorm has no gradient in exact arithmetic)
    scale = max(float(g.abs().max()) for g in grads.values())
    for key, grad in grads.items():
        for r in ranks:
            torch.testing.assert_close(r[1][key], grad, rtol=1e-4, atol=1e-6 * scale, msg=key)
    for key, stat in stats.items():  # every BatchNorm's running statistics are the whole batch's
        for r in ranks:
            torch.testing.assert_close(r[2][key], stat, rtol=1e-9, atol=1e-12, msg=key)
