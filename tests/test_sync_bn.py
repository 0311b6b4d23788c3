"""Synchronised BatchNorm (trainer/sync_bn.py): two gloo processes, each holding half of a fixed batch, give
the outputs, running statistics and gradients of one process with plain BatchNorm on the whole batch."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.helpers import run_ranks
from trainer.sync_bn import SyncBatchNorm, convert_sync_bn

WORLD = 2
MODES = ("eager", "compile")
MOMENTA = (0.1, None)  # None: BatchNorm's cumulative moving average


class Net(nn.Module):
    """Conv + BatchNorm2d, pooled, Linear + BatchNorm1d, and a replicated branch marked `sync_bn = False`."""

    def __init__(self, momentum: float | None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)  # a bias before BN has no gradient
        self.bn2d = nn.BatchNorm2d(4, momentum=momentum)
        self.fc = nn.Linear(4, 5, bias=False)
        self.bn1d = nn.BatchNorm1d(5, momentum=momentum)
        self.replicated = nn.Sequential(nn.Linear(2, 5, bias=False), nn.BatchNorm1d(5))
        self.replicated.sync_bn = False
        self.table = nn.Parameter(torch.randn(3, 2))  # the same rows on every rank (like BCL's class vectors)

    def forward(self, x):
        h = torch.relu(self.bn2d(self.conv(x))).mean(dim=(2, 3))
        return self.bn1d(self.fc(h)), self.replicated(self.table)


def build(momentum):
    torch.manual_seed(0)
    net = Net(momentum).double()  # float64: the comparison is then about the maths, not summation order
    with torch.no_grad():  # non-trivial affine parameters and running statistics to start from
        for bn in (net.bn2d, net.bn1d):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    return net


def whole_batch():
    g = torch.Generator().manual_seed(1)
    # an offset mean, so that how the variances are combined matters
    x = torch.randn(8, 3, 6, 6, generator=g, dtype=torch.float64) * 2 + 1
    upstream = torch.randn(8, 5, generator=g, dtype=torch.float64)  # d loss / d output, fixed
    return x, upstream


def rank_rows(rank, world):
    b = whole_batch()[0].shape[0] // world
    return slice(rank * b, (rank + 1) * b)


def run(net, mode, x, upstream, steps=2):
    """Two training steps' forwards (running statistics move twice); gradients of the second."""
    if mode == "compile":
        net = torch.compile(net, backend="aot_eager", dynamic=False)
    for _ in range(steps):
        inputs = x.clone().requires_grad_()
        out, rep = net(inputs)
    ((out * upstream).sum() + rep.sum()).backward()
    module = getattr(net, "_orig_mod", net)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    grads = {k: p.grad.clone() for k, p in module.named_parameters()}
    return out.detach(), inputs.grad, state, grads


def _worker(rank, world):
    x, upstream = whole_batch()
    rows = rank_rows(rank, world)
    results = {}
    for momentum in MOMENTA:
        for mode in MODES:
            net = convert_sync_bn(build(momentum))
            results[momentum, mode] = run(net.train(), mode, x[rows], upstream[rows])
    return results


@pytest.fixture(scope="module")
def rank_results():
    return run_ranks(_worker, WORLD)


def close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("momentum", MOMENTA)
def test_two_ranks_equal_plain_batch_norm_on_the_whole_batch(rank_results, momentum, mode):
    x, upstream = whole_batch()
    out, dx, state, grads = run(build(momentum).train(), "eager", x, upstream)  # plain BatchNorm
    ranks = [r[momentum, mode] for r in rank_results]
    for rank, (r_out, r_dx, r_state, _) in enumerate(ranks):
        rows = rank_rows(rank, WORLD)
        close(r_out, out[rows])
        close(r_dx, dx[rows])  # input gradients: this rank's rows of the one-process gradient
        for key, value in state.items():  # running statistics (and the untouched weights) of the whole batch
            if value.is_floating_point():
                close(r_state[key], value)
            else:
                assert torch.equal(r_state[key], value), key
    # parameter gradients: what DDP's all-reduce would combine (a sum here: the objective is a sum over rows)
    for key, value in grads.items():
        total = sum(r[3][key] for r in ranks)
        if key.startswith("replicated") or key == "table":
            close(total / WORLD, value)  # replicated rows: each rank has the whole gradient; DDP averages
        else:
            close(total, value)
    # the check has teeth: per-rank statistics differ from the whole batch's
    assert not torch.allclose(ranks[0][2]["bn2d.running_mean"], build(momentum).bn2d.running_mean)
    local = build(momentum).train()
    local_out = local(x[rank_rows(0, WORLD)])[0].detach()
    assert not torch.allclose(local_out, out[rank_rows(0, WORLD)], atol=1e-3)


def test_one_process_is_plain_batch_norm_and_conversion_shares_parameters():
    plain = build(0.1).train()
    net = convert_sync_bn(copy.deepcopy(plain)).train()
    assert isinstance(net.bn2d, SyncBatchNorm) and isinstance(net.bn1d, SyncBatchNorm)
    assert type(net.replicated[1]) is nn.BatchNorm1d  # the `sync_bn = False` subtree is kept
    params = dict(net.named_parameters())
    assert set(params) == set(dict(plain.named_parameters()))
    x, upstream = whole_batch()
    a, b = plain(x), net(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # no process group: torch's own kernel
    for key, value in plain.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key
    # the converted modules hold the original Parameter objects (an optimizer built before keeps working)
    bn = nn.BatchNorm1d(3)
    sync = convert_sync_bn(bn)
    assert (
        isinstance(sync, SyncBatchNorm) and sync.weight is bn.weight and sync.running_mean is bn.running_mean
    )
    net.eval()
    assert torch.equal(net(x)[0], plain.eval()(x)[0])


def test_rejects_one_dimensional_input():
    with pytest.raises(ValueError, match="at least 2-D"):
        SyncBatchNorm(3)._check_input_dim(torch.zeros(3))
