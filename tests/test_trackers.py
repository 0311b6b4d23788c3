"""Trackers through Accelerate: a TensorBoard event file read back, and clear errors for what is missing."""

from __future__ import annotations

import importlib.util

import pytest

import launch
from tests.helpers import tiny_argv
from trainer import rundir
from trainer.config import ConfigError
from trainer.recipe import load_config

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def test_tensorboard_gets_the_metrics_and_the_per_class_plot(demo_converted, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = tiny_argv(
        demo_converted,
        tmp_path,
        "tb",
        "--run.epochs=2",
        "--run.eval_every=1",
        '--run.trackers=["tensorboard"]',
    )
    launch.main(argv)
    run = tmp_path / "tb"
    (events,) = (run / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    records = rundir.read_metrics(run)
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in records], rel=1e-6)
    assert [e.value for e in acc.Scalars("eval/few")] == pytest.approx([r["few"] for r in records], rel=1e-6)
    assert [e.step for e in acc.Scalars("train/lr")] == [1, 2]
    images = acc.Images("eval/per_class_accuracy")
    assert [im.step for im in images] == [1, 2] and images[0].width > 300 and images[0].height > 200


def test_trackers_are_checked_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="run.trackers: unknown value 'mlflow'; valid: 'tensorboard'"):
        load_config(None, ['--run.trackers=["mlflow"]'])
    if importlib.util.find_spec("wandb") is not None:
        return  # the missing-package message needs a machine without wandb (CI has none)
    with pytest.raises(ConfigError, match=r"'wandb' needs the wandb package.*pip install wandb"):
        launch.main(tiny_argv(tmp_path / "no_data", tmp_path, "wb", '--run.trackers=["wandb"]'))
    assert not (tmp_path / "wb").exists()


def test_a_tensorboard_that_fails_to_import_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch):
    """A package that is installed but broken (a protobuf that does not fit): found before the run folder."""
    import sys

    fake = tmp_path / "site"
    (fake / "tensorboard").mkdir(parents=True)
    (fake / "tensorboard" / "__init__.py").write_text('raise ImportError("protobuf 9 does not fit\\nmore")\n')
    monkeypatch.syspath_prepend(str(fake))
    for name in [m for m in sys.modules if m.startswith(("tensorboard", "torch.utils.tensorboard"))]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ConfigError) as err:
        launch.main(tiny_argv(tmp_path / "no_data", tmp_path, "tb", '--run.trackers=["tensorboard"]'))
    assert "\n" not in str(err.value) and "importing torch.utils.tensorboard fails (ImportError: " in str(
        err.value
    )
    assert not (tmp_path / "tb").exists()
