"""NCL's MoCo queues under DDP (trainer/ncl_model.py): two gloo processes, each training on half of a batch,
enqueue every rank's keys in rank order, so both hold the one queue a single process would, eager and
compiled; the queues are left out of DDP's broadcast from rank 0."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import run_ranks
from trainer.models import rank_identical_buffers
from trainer.ncl_model import NCLModel
from trainer.resnet_cifar import ResNetCifar

pytestmark = pytest.mark.slow

WORLD, N, Q, E = 2, 4, 8, 6  # processes, images per view in the global batch, queue size, MoCo dimension
MODES = ("eager", "compile")


def tiny() -> NCLModel:
    torch.manual_seed(0)  # the same initialisation on every rank, as DDP's first broadcast makes it
    body = lambda: ResNetCifar(1, (4, 8, 16))  # noqa: E731
    return NCLModel(5, body=body, mean=(0.5,) * 3, std=(0.25,) * 3, moco_dim=E, queue_size=Q)


def rank_images(rank: int) -> torch.Tensor:
    """This rank's share of a fixed global batch: its classification rows, then its key rows."""
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2 * N, 3, 8, 8), generator=g, dtype=torch.uint8)
    n = N // WORLD
    rows = slice(rank * n, (rank + 1) * n)
    return torch.cat([images[:N][rows], images[N:][rows]])


def own_keys(model: NCLModel, images: torch.Tensor) -> torch.Tensor:
    """This rank's keys [K, n, e] through a copy of its key branch (train-mode BN over this rank's rows)."""
    ref = copy.deepcopy(model).train()
    x = ref.normalize(images[images.shape[0] // 2 :])
    with torch.no_grad():
        pairs = zip(ref.key_bodies, ref.key_projectors, strict=True)
        return torch.stack([F.normalize(p(b(x)), dim=1) for b, p in pairs])


def _worker(rank: int, world: int) -> dict:
    results = {}
    for mode in MODES:
        model = tiny().train()
        before = model.queues.clone()
        images = rank_images(rank)
        keys = own_keys(model, images)
        step = torch.compile(model, backend="aot_eager") if mode == "compile" else model
        step(images)
        results[mode] = (before, keys, model.queues.clone(), int(model.queue_ptr))
    return results


@pytest.fixture(scope="module")
def rank_results():
    return run_ranks(_worker, WORLD)


@pytest.mark.parametrize("mode", MODES)
def test_every_rank_enqueues_every_ranks_keys_in_rank_order(rank_results, mode):
    (before, keys0, queues0, ptr0), (_, keys1, queues1, ptr1) = (r[mode] for r in rank_results)
    assert torch.equal(queues0, queues1)  # one queue on both ranks, with no broadcast needed
    assert ptr0 == ptr1 == N  # advanced by the global batch
    n = N // WORLD
    torch.testing.assert_close(queues0[:, :n], keys0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(queues0[:, n:N], keys1, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(keys0, keys1, atol=1e-3)  # the ranks' keys differ: the check has teeth
    assert torch.equal(queues0[:, N:], before[:, N:])  # the rest of the queue is untouched


def test_the_queues_are_left_out_of_ddps_broadcast():
    assert rank_identical_buffers(tiny()) == ["queues", "queue_ptr"]
