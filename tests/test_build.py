"""trainer.build.build_parts: the one wiring of a run's parts (launch.py, the step bench, the GPU check)."""

from __future__ import annotations

import pytest
import torch

from tools.longtail import LongTailMeta
from trainer.build import build_parts, check_parts
from trainer.config import ConfigError
from trainer.models import rank_identical_buffers
from trainer.recipe import load_config
from trainer.sync_bn import SyncBatchNorm

META = LongTailMeta((20, 12, 8, 5, 3, 2))
TINY = ("--model.arch=resnet_tiny", "--step.mode=eager", "--step.precision=fp32", "--data.batch_size=8")


def _build(*overrides: str, rank: int = 0, prepare=lambda m: m):
    return build_parts(load_config(None, [*TINY, *overrides]), META, device="cpu", rank=rank, prepare=prepare)


def test_every_rank_starts_from_the_same_weights_and_then_draws_its_own():
    draws, weights = [], []
    for rank in (0, 1):
        parts = _build(rank=rank)
        draws.append(torch.rand(4))  # what each rank's augmentations would draw next
        weights.append(parts.model.state_dict())
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=0, atol=0, msg=key)
    assert not torch.equal(draws[0], draws[1])
    assert torch.equal(draws[0], (_build(rank=0), torch.rand(4))[1])  # and the same on a rerun


def test_the_model_is_prepared_after_the_optimizer_and_the_steps_use_what_prepare_returned():
    seen = []

    def prepare(model):
        seen.append(model)
        return torch.nn.Sequential(model)  # a stand-in wrapper

    parts = _build(prepare=prepare)
    assert len(seen) == 1 and parts.model[0] is seen[0]
    assert parts.train_step.model is parts.model
    owned = {id(p) for group in parts.optimizer.param_groups for p in group["params"]}
    assert owned == {id(p) for p in seen[0].parameters()}


def test_sync_bn_and_rank_identical_buffers_are_wired_before_ddp():
    parts = _build("--model.sync_bn=true")
    assert any(isinstance(m, SyncBatchNorm) for m in parts.model.modules())
    ncl = _build("--loss.name=dbm_ncl", "--loss.scale=16", "--model.ncl_queue=16")
    ignored = set(ncl.model._ddp_params_and_buffers_to_ignore)
    assert ignored and ignored == set(rank_identical_buffers(ncl.model))


def test_a_model_the_batch_cannot_hold_is_refused_before_anything_is_built():
    cfg = load_config(None, [*TINY, "--loss.name=dbm_ncl", "--model.ncl_queue=12"])
    with pytest.raises(ConfigError, match="model.ncl_queue=12"):
        check_parts(cfg, world_size=1)
    with pytest.raises(ConfigError, match="model.ncl_queue=12"):
        build_parts(cfg, META, device="cpu")
