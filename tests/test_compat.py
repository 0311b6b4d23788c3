"""losses.compat on the running torch (CI runs the fast suite on the newest and the oldest supported torch):
every name resolves to the running torch's own API, the range it names is setup.cfg's and holds both pinned
torches, and the gathers built on them give every rank's rows and their gradients across two real processes
(gloo, eager; test_collectives_capture compiles them on a real group of one)."""

from __future__ import annotations

import configparser

import pytest
import torch
import torch.distributed as dist
from packaging.requirements import Requirement
from packaging.version import Version
from torch.distributed import _functional_collectives as fc

from losses import compat
from losses.distributed import gather_rows, gather_values
from tests.helpers import ROOT, run_ranks

WORLD = 2


@pytest.mark.parametrize(
    "name, spellings",
    [
        ("all_gather_single", ("all_gather_single", "all_gather_tensor")),
        ("all_gather_single_autograd", ("all_gather_single_autograd", "all_gather_tensor_autograd")),
        ("wait_tensor", ("wait_tensor",)),
    ],
)
def test_each_name_is_the_running_torchs_newest_spelling(name, spellings):
    newest = next(getattr(fc, s) for s in spellings if hasattr(fc, s))
    assert getattr(compat, name) is newest


def test_a_torch_without_any_spelling_fails_naming_the_api():
    with pytest.raises(ImportError, match=r"fastlt supports torch>=2\.11,<2\.15: .*fc_gone\.all_gather_x"):
        compat._first(type(fc)("fc_gone"), "all_gather_x")


def _requirements(lines: str) -> dict[str, Requirement]:
    reqs = (Requirement(line) for line in lines.splitlines() if line.strip() and not line.startswith("#"))
    return {r.name: r for r in reqs}


def test_the_declared_range_is_compats_and_holds_both_pins_and_the_running_torch():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    declared = _requirements(cfg["options"]["install_requires"])
    assert declared["torch"].specifier == Requirement(compat.SUPPORTED).specifier
    for name in ("constraints.txt", "constraints-floor.txt"):
        pins = _requirements((ROOT / name).read_text())
        for package in ("torch", "torchvision"):
            (pin,) = pins[package].specifier
            assert pin.operator == "==" and pin.version in declared[package].specifier, (name, package)
    assert Version(torch.__version__).base_version in declared["torch"].specifier


def rows(rank: int) -> torch.Tensor:
    """Rank `rank`'s 2 x 3 block of the global batch (distinct values on every rank)."""
    return torch.arange(6, dtype=torch.float32).reshape(2, 3) + 10 * rank


def _worker(rank: int, world: int) -> tuple[list, list, list]:
    weight = torch.arange(world * 6, dtype=torch.float32).reshape(world * 2, 3)
    x = rows(rank).requires_grad_()
    gathered = gather_rows(x, dist.group.WORLD)
    labels = gather_values(x.detach().long(), dist.group.WORLD)
    (gathered * weight).sum().backward()
    # plain values: the collectives return a tensor subclass that torch.load refuses
    return gathered.tolist(), labels.tolist(), x.grad.tolist()


def test_two_processes_gather_every_ranks_rows_with_their_gradient():
    results = run_ranks(_worker, WORLD)
    whole = torch.cat([rows(r) for r in range(WORLD)])
    weight = torch.arange(WORLD * 6, dtype=torch.float32).reshape(WORLD * 2, 3)
    for rank, (gathered, labels, grad) in enumerate(results):
        assert gathered == whole.tolist() and labels == whole.long().tolist()
        # every rank's loss reads rank r's rows once: their gradient sums over the ranks
        assert grad == (WORLD * weight[2 * rank : 2 * rank + 2]).tolist()
