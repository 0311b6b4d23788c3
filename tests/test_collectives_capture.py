"""The global-batch BalSCL gather and the synchronised BatchNorm on a real process group of one rank: the
collective path (not the one-process shortcut) gives the one-process values and gradients, eagerly and
compiled (CPU, gloo), and inside a captured CUDA graph that is replayed on new data (GPU, NCCL)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from losses import balanced_contrastive
from losses.distributed import batch_group
from tests.helpers import free_port
from trainer.sync_bn import sync_batch_norm

MOMENTUM, EPS = 0.1, 1e-5


def one_rank_group(backend: str, device: str):
    extra = {"device_id": torch.device(device)} if backend == "nccl" else {}
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1, **extra
    )
    return dist.group.WORLD


def inputs(device: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(12, 6, generator=g), dim=1)
    centers = F.normalize(torch.randn(4, 6, generator=g), dim=1)
    target = torch.tensor([0, 1, 1, 2, 0, 3])
    x = torch.randn(6, 5, 3, 3, generator=g) * 2 + 1
    weight, bias = torch.rand(5, generator=g) + 0.5, torch.rand(5, generator=g) - 0.5
    upstream = torch.randn(6, 5, 3, 3, generator=g)
    tensors = [emb, centers, target, x, weight, bias, upstream]
    return [
        t.to(device).requires_grad_(t.is_floating_point() and i not in (6,)) for i, t in enumerate(tensors)
    ]


def forward(group, emb, centers, target, x, weight, bias, running_mean, running_var, upstream):
    """A training step's forward: BalSCL over the group plus a synchronised BN (compiled as a whole)."""
    loss = balanced_contrastive(emb, centers, target, 0.1, group)
    y = sync_batch_norm(x, weight, bias, running_mean, running_var, MOMENTUM, EPS, group)
    return loss + (y * upstream).sum()


def step(fn, group, emb, centers, target, x, weight, bias, running_mean, running_var, upstream):
    """`fn`'s forward, then its backward (the compiled backward graph when `fn` is compiled)."""
    total = fn(group, emb, centers, target, x, weight, bias, running_mean, running_var, upstream)
    return (total, *torch.autograd.grad(total, (emb, centers, x, weight, bias)))


def reference(emb, centers, target, x, weight, bias, running_mean, running_var, upstream):
    """One process: no collective, torch's BatchNorm."""
    loss = balanced_contrastive(emb, centers, target, 0.1)
    y = F.batch_norm(x, running_mean, running_var, weight, bias, True, MOMENTUM, EPS)
    total = loss + (y * upstream).sum()
    return (total, *torch.autograd.grad(total, (emb, centers, x, weight, bias)))


def check(device: str, run, seed: int) -> None:
    emb, centers, target, x, weight, bias, upstream = inputs(device, seed)
    stats = [torch.zeros(5, device=device), torch.ones(5, device=device)]
    ref_stats = [s.clone() for s in stats]
    got = run(emb, centers, target, x, weight, bias, *stats, upstream)
    want = reference(emb, centers, target, x, weight, bias, *ref_stats, upstream)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(stats, ref_stats, strict=True):  # running statistics updated in place, as BatchNorm's
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("compiled", [False, True])
def test_collective_path_on_cpu(compiled):
    group = one_rank_group("gloo", "cpu")
    try:
        assert batch_group() is None  # a group of one: the losses and BN take the one-process path ...
        fn = torch.compile(forward, backend="aot_eager", fullgraph=True) if compiled else forward
        check("cpu", lambda *args: step(fn, group, *args), seed=0)  # ... but the collective path is exact
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
def test_collectives_are_captured_and_replayed_on_cuda():
    device = "cuda"
    group = one_rank_group("nccl", device)
    try:
        static = inputs(device, seed=0)
        stats = [torch.zeros(5, device=device), torch.ones(5, device=device)]
        emb, centers, target, x, weight, bias, upstream = static
        fn = torch.compile(forward, fullgraph=True)  # Inductor, no CUDA graphs of its own (as in graph mode)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up: compiles, creates the NCCL communicator
                step(fn, group, emb, centers, target, x, weight, bias, *stats, upstream)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step(fn, group, emb, centers, target, x, weight, bias, *stats, upstream)

        def replay(*args):
            for dst, src in zip((emb, centers, target, x, weight, bias, *stats, upstream), args, strict=True):
                dst.detach().copy_(src)
            graph.replay()
            torch.cuda.synchronize()
            for dst, src in zip(args[6:8], stats, strict=True):  # hand back the updated running stats
                dst.copy_(src)
            return [t.clone() for t in out]

        check(device, replay, seed=1)  # new data through the captured collectives
        check(device, replay, seed=2)
    finally:
        dist.destroy_process_group()
