"""`--resume` continues an interrupted run to the same end as an uninterrupted one."""

from __future__ import annotations

import pytest
import torch

import launch
from tests.helpers import RESUME, assert_same_run, interrupted_run, tiny_argv
from trainer import checkpoint, rng, rundir

# Everything resume must restore is exercised: RESUME's augmentation and schedule, a loss with epoch state
# (DRW switches on at the second epoch), optimizer momentum.
EXTRA = (*RESUME, "--loss.name=dbm_drw", "--loss.drw_epoch=1", "--loss.scale=16")


def test_resume_matches_an_uninterrupted_run(demo_converted, tmp_path, monkeypatch, one_thread):
    launch.main(tiny_argv(demo_converted, tmp_path, "straight", *EXTRA))

    interrupted_run(tiny_argv(demo_converted, tmp_path, "resumed", *EXTRA), monkeypatch)
    run = tmp_path / "resumed"
    assert checkpoint.load_latest(run)["epoch"] == 1
    assert not (run / "results.json").exists()

    launch.main(["--resume", str(run)])
    a, _ = assert_same_run(tmp_path / "straight", run)
    assert a["epoch"] == 2


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
