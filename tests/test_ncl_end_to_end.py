"""DBM-NCL end to end through `launch.main` as a user runs it: two views per image through both
loaders, the three experts with their key branches and queues, the NCL loss, eager and compiled; and a
resumed run that ends where an uninterrupted one does (crops, flips and augmentation on), queues and key
bodies included."""

from __future__ import annotations

import json
import math

import pytest
import torch

import launch
from tests.helpers import RESUME, assert_same_run, interrupted_run, tiny_argv
from trainer import checkpoint, rundir

QUEUE = 48  # 3 batches of tiny_argv's 16: the pointer wraps inside an epoch
NCL_ARGS = (
    "--loss.name=dbm_ncl",
    "--loss.scale=16",
    "--loss.ncl_hcm_n=3",
    f"--model.ncl_queue={QUEUE}",
    "--model.ncl_moco_dim=16",
)


# Each backend once and each step mode once: the loaders hand any step the same uint8 batches, and the
# compiled NCL step equals the eager one in tests/test_step.py and tests/test_ncl_model.py.
@pytest.mark.parametrize(("backend", "mode"), [("ffcv", "compile"), ("dali", "eager")])
def test_dbm_ncl_epoch_end_to_end(demo_converted, tmp_path, backend, mode):
    name = f"dbm_ncl_{backend}_{mode}"
    compiled = ("--step.mode=compile", "--step.compile_backend=aot_eager") if mode == "compile" else ()
    augment = ("--data.auto_augment=cifar10", "--data.cutout=8", "--data.view_crop_scale=[0.2, 1.0]")
    argv = tiny_argv(demo_converted, tmp_path, name, *NCL_ARGS, *augment, *compiled, backend=backend)
    results = launch.main(argv)

    (record,) = rundir.read_metrics(tmp_path / name)
    assert math.isfinite(record["loss"]) and record["loss"] > 0 and 0 <= record["top1"] <= 1
    meta = json.loads((demo_converted / "test.meta.json").read_text())
    assert results["eval_samples"] == meta["num_samples"]  # evaluation: one view, every image once
    assert len(results["final"]["per_class"]) == meta["num_classes"]
    # The checkpoint holds the key branch and the queues, the pointer where the epoch's batches left it.
    state = checkpoint.load_latest(tmp_path / name)["model"]
    steps = json.loads((demo_converted / "train.meta.json").read_text())["num_samples"] // 16
    assert state["queues"].shape == (3, QUEUE, 16) and int(state["queue_ptr"]) == steps * 16 % QUEUE
    torch.testing.assert_close(state["queues"].norm(dim=2), torch.ones(3, QUEUE))  # unit keys
    assert {"key_bodies.2.conv1.weight", "key_bodies.0.bn1.running_var", "key_projectors.1.2.weight"} <= set(
        state
    )


def test_ncl_linear_epoch_end_to_end(demo_converted, tmp_path):
    """The linear-head baseline recipe's loss through the same path (eager, FFCV)."""
    argv = tiny_argv(demo_converted, tmp_path, "ncl_linear", *NCL_ARGS, "--loss.name=ncl_linear")
    results = launch.main(argv)
    assert math.isfinite(results["final"]["top1"])
    assert "classifiers.0.bias" in checkpoint.load_latest(tmp_path / "ncl_linear")["model"]


# The resume test's overrides: NCL's keys on the shared RESUME (crop, flip, AutoAugment, Cutout on; the key
# view's contrastive crop, flip, jitter, grey and blur are drawn from (seed, rank, epoch, batch) as well).
# One backend: that both backends' two-view batches are a function of (seed, epoch) is
# tests/test_loaders_determinism.py's; what is NCL's own to restore (queues, key bodies) is the same on both.
NCL_RESUME = (*NCL_ARGS, *RESUME)


def test_resume_matches_an_uninterrupted_run(demo_converted, tmp_path, monkeypatch, one_thread):
    data, backend = demo_converted, "dali"
    launch.main(tiny_argv(data, tmp_path, "straight", *NCL_RESUME, backend=backend))
    interrupted_run(tiny_argv(data, tmp_path, "resumed", *NCL_RESUME, backend=backend), monkeypatch)
    run = tmp_path / "resumed"
    first = checkpoint.load_latest(run)
    assert first["epoch"] == 1
    launch.main(["--resume", str(run)])

    a, b = assert_same_run(tmp_path / "straight", run)
    assert a["epoch"] == 2
    # The queues and key bodies moved in epoch 2, so the comparison above covers their restore.
    for key in ("queues", "key_bodies.0.conv1.weight", "key_bodies.1.bn1.running_mean"):
        assert not torch.equal(first["model"][key], b["model"][key]), key
