"""`--resume` continues an interrupted run to the same end as an uninterrupted one."""

from __future__ import annotations

import math

import pytest
import torch

import launch
from tests.helpers import interrupted_run, tiny_argv
from trainer import checkpoint, rng, rundir

# Everything resume must restore is exercised: device-side augmentation (AutoAugment + Cutout draw from the
# loader's per-epoch generators), a loss with epoch state (DRW switches on at the second epoch), a schedule
# that changes every epoch, optimizer momentum. FFCV's own random crop and flip draw from numba's unseeded
# per-thread generators (the padded crop too), so they are turned off (a full-image "random resized" crop, no
# flip) to make two runs comparable at all.
EXTRA = (
    "--run.epochs=2",
    "--run.checkpoint_every=1",
    "--loss.name=dbm_drw",
    "--loss.drw_epoch=1",
    "--loss.scale=16",
    "--data.auto_augment=cifar10",
    "--data.cutout=8",
    "--data.crop=resized",
    "--data.crop_scale=[1.0, 1.0]",
    "--data.hflip=false",
    "--optim.schedule=cosine",
    "--optim.warmup_epochs=1",
    "--optim.lr=0.05",
)


def _final_state(run):
    return checkpoint.load_latest(run)


def _close(a, b, tol=1e-5):
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def test_resume_matches_an_uninterrupted_run(demo_converted, tmp_path, monkeypatch, one_thread):
    straight = launch.main(tiny_argv(demo_converted, tmp_path, "straight", *EXTRA))

    interrupted_run(tiny_argv(demo_converted, tmp_path, "resumed", *EXTRA), monkeypatch)
    run = tmp_path / "resumed"
    assert _final_state(run)["epoch"] == 1
    assert not (run / "results.json").exists()

    resumed = launch.main(["--resume", str(run)])

    a, b = _final_state(tmp_path / "straight"), _final_state(run)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for (ka, va), (kb, vb) in zip(
        a["optimizer"]["state"].items(), b["optimizer"]["state"].items(), strict=True
    ):
        assert ka == kb
        torch.testing.assert_close(vb["momentum_buffer"], va["momentum_buffer"], rtol=1e-5, atol=1e-6)

    ra, rb = rundir.read_metrics(tmp_path / "straight"), rundir.read_metrics(run)
    assert [r["epoch"] for r in rb] == [1, 2]  # one line per epoch, none repeated by the resume
    for x, y in zip(ra, rb, strict=True):
        for field in ("loss", "lr", "top1", "many", "medium", "few"):
            assert _close(x[field], y[field]), (field, x[field], y[field])
    for part in ("best", "final"):
        for field in ("epoch", "top1", "many", "medium", "few"):
            assert _close(straight[part][field], resumed[part][field]), (part, field)


def test_resume_needs_a_run_folder(tmp_path):
    with pytest.raises(rundir.RunDirError, match="config.toml"):
        launch.main(["--resume", str(tmp_path / "nothing")])


def test_rng_states_round_trip():
    import random

    import numpy as np

    state = rng.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002 - the global generator is the point
    rng.set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])
