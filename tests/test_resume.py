"""`--resume` continues an interrupted run to the same end as an uninterrupted one, with every augmentation of
the recipes on (random crop and flip in the loader, AutoAugment and Cutout on the device), on both backends:
interrupted at an epoch boundary in process, or killed with SIGKILL. Since the uninterrupted run is a second
run of the demo recipe, this is also the check that two runs of the same config and seed agree exactly."""

from __future__ import annotations

import pytest
import torch

import launch
from tests.helpers import RESUME, assert_same_run, interrupted_run, killed_run, tiny_argv
from trainer import checkpoint, rng, rundir

# Everything resume must restore is exercised: RESUME's augmentation and schedule, a loss with epoch state
# (DRW switches on at the second epoch), optimizer momentum.
EXTRA = (*RESUME, "--loss.name=dbm_drw", "--loss.drw_epoch=1", "--loss.scale=16")


@pytest.mark.parametrize(("backend", "stop"), [("ffcv", "interrupt"), ("dali", "kill")])
def test_resume_matches_an_uninterrupted_run(
    demo_converted, tmp_path, monkeypatch, one_thread, backend, stop
):
    launch.main(tiny_argv(demo_converted, tmp_path, "straight", *EXTRA, backend=backend))

    run = tmp_path / "resumed"
    argv = tiny_argv(demo_converted, tmp_path, "resumed", *EXTRA, backend=backend)
    if stop == "kill":
        killed_run(argv, run)
    else:
        interrupted_run(argv, monkeypatch)
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
