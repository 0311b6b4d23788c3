"""DBM-BCL end to end: three views per image through the loaders, one encoder pass, the BCL heads
and the balanced contrastive loss, for both backends, through `launch.main` as a user runs it."""

from __future__ import annotations

import json

import pytest

import launch
from tests.helpers import tiny_argv
from trainer import rundir


# Each backend and each loss once: the two losses differ only in their logit map (tests/test_losses_bcl.py).
@pytest.mark.parametrize(("backend", "loss"), [("ffcv", "dbm_bcl"), ("dali", "bcl")])
def test_bcl_epoch_end_to_end(demo_converted, tmp_path, backend, loss):
    name = f"{loss}_{backend}"
    argv = tiny_argv(
        demo_converted,
        tmp_path,
        name,
        f"--loss.name={loss}",
        "--loss.scale=16",
        "--data.auto_augment=cifar10",
        "--data.cutout=8",
        backend=backend,
    )
    results = launch.main(argv)
    (record,) = rundir.read_metrics(tmp_path / name)
    # alpha * CE + beta * contrastive: positive and finite
    assert 0 < record["loss"] < 100
    meta = json.loads((demo_converted / "test.meta.json").read_text())
    assert results["eval_samples"] == meta["num_samples"]  # evaluation: one view, every image once
    assert len(results["final"]["per_class"]) == meta["num_classes"]
