"""BCL over the global batch, in two gloo processes each holding half of a fixed batch: the loss alone
(losses/bcl.py, losses/distributed.py) and DBM-BCL's model under DDP with synchronised BatchNorm
(trainer/sync_bn.py) compute together what one process computes on the whole batch, eager and compiled."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from losses import ModelOutput, balanced_contrastive, build_loss, log_prior
from losses.distributed import batch_group
from tests.helpers import run_ranks
from trainer.config import ModelConfig
from trainer.models import build_classifier
from trainer.sync_bn import SyncBatchNorm, convert_sync_bn

pytestmark = pytest.mark.slow

WORLD = 2
COUNTS = [40, 20, 10, 5, 2, 1]  # class 5 never appears in the batch: it is seen only through its centre
LOSSES = ("dbm_bcl", "bcl")
MODES = ("eager", "compile")


def whole_batch():
    """A fixed batch of B = 8 images: view-0 cosines [B, C], view-1 and view-2 embeddings, centres, labels."""
    g = torch.Generator().manual_seed(0)
    b, c, e = 8, len(COUNTS), 5
    cosines = torch.rand(b, c, generator=g) * 2 - 1
    view1 = F.normalize(torch.randn(b, e, generator=g), dim=1)
    view2 = F.normalize(torch.randn(b, e, generator=g), dim=1)
    centers = F.normalize(torch.randn(c, e, generator=g), dim=1)
    target = torch.tensor([0, 0, 1, 0, 2, 1, 3, 4])
    return cosines, view1, view2, centers, target


def leaves(*tensors):
    return [t.clone().requires_grad_() for t in tensors]


def rank_rows(rank: int, world: int) -> slice:
    b = whole_batch()[0].shape[0] // world
    return slice(rank * b, (rank + 1) * b)


def run_loss(name: str, mode: str, cosines, view1, view2, centers, target):
    """The loss and the gradients of (cosines, view-1 rows, view-2 rows, centres) for the given rows."""
    cosines, view1, view2, centers = leaves(cosines, view1, view2, centers)
    loss_fn = build_loss(name, COUNTS)
    if mode == "compile":
        loss_fn = torch.compile(loss_fn, backend="aot_eager", dynamic=False)
    features = torch.zeros(cosines.shape[0], 3)
    # embeddings: this process's view-1 rows, then its view-2 rows (what the model hands over)
    value = loss_fn(ModelOutput(features, cosines, torch.cat([view1, view2]), centers), target)
    value.backward()
    return value.detach(), cosines.grad, view1.grad, view2.grad, centers.grad


def _worker(rank: int, world: int) -> dict:
    """Both parts in one pair of processes (a spawn costs seconds)."""
    cosines, view1, view2, centers, target = whole_batch()
    rows = rank_rows(rank, world)
    results = {}
    for name in LOSSES:
        for mode in MODES:
            results[name, mode] = run_loss(
                name, mode, cosines[rows], view1[rows], view2[rows], centers, target[rows]
            )
    images, labels = rank_images(rank, world)
    for mode in MODES:
        net = ddp_model(sync=True)
        assert any(isinstance(m, SyncBatchNorm) for m in net.modules())
        results["ddp", mode] = train_step(DistributedDataParallel(net), images, labels, mode)
    return results


@pytest.fixture(scope="module")
def rank_results():
    return run_ranks(_worker, WORLD)


def close(actual, expected):
    # 1e-5 relative, with an absolute floor at 1e-5 of the largest entry for entries that are ~0
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", LOSSES)
def test_two_ranks_equal_one_process_on_the_whole_batch(rank_results, name, mode):
    assert batch_group() is None  # this process: no process group, the one-process path
    value, d_cos, d_v1, d_v2, d_centers = run_loss(name, "eager", *whole_batch())
    ranks = [r[name, mode] for r in rank_results]
    # the losses differ per rank (each averages its own anchors) and their mean is the whole-batch loss
    assert not torch.allclose(ranks[0][0], ranks[1][0])
    close(sum(r[0] for r in ranks) / WORLD, value)
    for rank, (_, r_cos, r_v1, r_v2, _) in enumerate(ranks):
        rows = rank_rows(rank, WORLD)
        # each rank's gradients / world size = the one-process gradients of its rows
        close(r_cos / WORLD, d_cos[rows])
        close(r_v1 / WORLD, d_v1[rows])
        close(r_v2 / WORLD, d_v2[rows])
    # the centres are replicated (every rank computes them from the same weights): DDP averages their
    # gradients, and that average is the one-process gradient
    close(sum(r[4] for r in ranks) / WORLD, d_centers)


def test_per_rank_contrast_would_differ(rank_results):
    """The check has teeth: a rank contrasting only its own anchors gives a different loss."""
    cosines, view1, view2, centers, target = whole_batch()
    rows = rank_rows(0, WORLD)
    local = balanced_contrastive(torch.cat([view1[rows], view2[rows]]), centers, target[rows], 0.1)
    total_local = 2.0 * F.cross_entropy(30 * cosines[rows] + log_prior(COUNTS), target[rows]) + 0.6 * local
    assert not torch.allclose(total_local, rank_results[0]["bcl", "eager"][0], rtol=1e-3)


# --- DBM-BCL's model under DDP with synchronised BatchNorm: gradients and running statistics

B, CLASSES = 8, 5  # images per view in the global batch, classes
MODEL_COUNTS = [30, 12, 6, 3, 2]


def ddp_model(sync: bool):
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


def image_batch():
    """Three views of B images (view-major) and their labels."""
    g = torch.Generator().manual_seed(1)
    views = torch.randint(0, 256, (3, B, 3, 16, 16), dtype=torch.uint8, generator=g)
    target = torch.tensor([0, 0, 1, 2, 0, 1, 3, 4])
    return views, target


def rank_images(rank, world):
    """This rank's images, stacked [v0; v1; v2] as the loader does, and its labels."""
    views, target = image_batch()
    b = B // world
    rows = slice(rank * b, (rank + 1) * b)
    return views[:, rows].reshape(-1, 3, 16, 16), target[rows]


def train_step(net, images, target, mode):
    """One training forward and backward: the loss value and the gradients by parameter name."""
    loss_fn = build_loss("dbm_bcl", MODEL_COUNTS, scale=16.0)
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


@pytest.mark.parametrize("mode", MODES)
def test_ddp_gradients_and_statistics_equal_one_process(rank_results, mode):
    views, target = image_batch()
    value, grads, stats = train_step(ddp_model(sync=False), views.reshape(-1, 3, 16, 16), target, "eager")
    ranks = [r["ddp", mode] for r in rank_results]
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
