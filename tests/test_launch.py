"""`launch.main` end to end on the converted demo data: one epoch per backend and the run folder it writes."""

from __future__ import annotations

import json

import pytest
import torch

import launch
from tests.helpers import tiny_argv
from trainer import checkpoint, rundir
from trainer.config import ConfigError, load_config

METRIC_FIELDS = ("epoch", "loss", "lr", "img_per_s", "top1", "many", "medium", "few", "time")


@pytest.mark.parametrize("backend", ["ffcv", "dali"])
def test_one_epoch_writes_the_run_folder(demo_converted, tmp_path, backend):
    argv = tiny_argv(
        demo_converted, tmp_path, f"one_{backend}", "--loss.name=dbm_ce", "--loss.scale=16", backend=backend
    )
    results = launch.main(argv)
    run = tmp_path / f"one_{backend}"

    # config.toml reads back to the Config the run used
    assert load_config(run / "config.toml") == load_config(argv[1], argv[2:])

    env = json.loads((run / "env.json").read_text())
    assert env["world_size"] == 1
    for key in ("torch", "torchvision", "accelerate", "ffcv", "dali"):
        assert key in env["versions"]
    assert torch.__version__.startswith(env["versions"]["torch"])
    assert "commit" in env["git"] and env["device"]

    records = rundir.read_metrics(run)
    assert len(records) == 1
    for field in METRIC_FIELDS:
        assert field in records[0], field
    rec = records[0]
    assert rec["epoch"] == 1 and rec["loss"] > 0 and rec["img_per_s"] > 0 and 0 <= rec["top1"] <= 1

    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    meta = json.loads((demo_converted / "test.meta.json").read_text())
    assert results["eval_samples"] == meta["num_samples"]  # every test image counted exactly once
    assert results["best"]["epoch"] == results["final"]["epoch"] == 1
    for group in ("top1", "many", "medium", "few"):
        assert results["final"][group] == rec[group]
    assert len(results["final"]["per_class"]) == meta["num_classes"]

    assert (run / "per_class_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (path,) = checkpoint.checkpoints(run)
    state = torch.load(path, weights_only=True)
    assert path.name == "epoch-0001.pt" and state["epoch"] == 1 and "model" in state and "optimizer" in state
    assert not list(run.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_an_existing_run_is_replaced_only_when_asked(demo_converted, tmp_path):
    run = tmp_path / "taken"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "epoch-0007.pt").write_bytes(b"old")
    (run / "metrics.jsonl").write_text('{"epoch": 7}\n')
    (run / "notes.txt").write_text("mine")
    with pytest.raises(rundir.RunDirError, match="--resume"):
        launch.main(tiny_argv(demo_converted, tmp_path, "taken"))
    assert (run / "checkpoints" / "epoch-0007.pt").read_bytes() == b"old"

    launch.main(tiny_argv(demo_converted, tmp_path, "taken", "--run.overwrite=true", "--run.eval_every=0"))
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1]
    assert [p.name for p in checkpoint.checkpoints(run)] == ["epoch-0001.pt"]
    assert checkpoint.load_latest(run)["epoch"] == 1
    assert (run / "notes.txt").read_text() == "mine"  # only a run's own outputs are replaced


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        (["--model.arch=resnet9000"], "model.arch"),
        (["--loss.name=dbm"], "loss.name"),
        (["--optim.schedule=linear"], "optim.schedule"),
        (["--data.backend=webdataset"], "data.backend"),
        (["--run.epochz=3"], "run.epochz"),
        (["--run.epochs=three"], "run.epochs"),
        # NCL's experts: a model kind that does not fit the arch or the batch, named before any data is read.
        (["--loss.name=dbm_ncl", "--model.arch=resnet50"], "model.arch"),
        (["--loss.name=dbm_ncl", "--model.ncl_queue=1000"], "model.ncl_queue"),
    ],
)
def test_bad_names_fail_before_any_work(tmp_path, extra, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        launch.main(tiny_argv(tmp_path / "no_data", tmp_path, "bad", *extra))
    assert not (tmp_path / "bad").exists()


def test_argument_errors():
    with pytest.raises(SystemExit):
        launch.main([])  # neither --config nor --resume
    with pytest.raises(SystemExit):
        launch.main(["--config", "configs/demo.toml", "stray"])
    args, overrides = launch.parse_args(["--config", "x.toml", "--optim.lr", "0.3", "--run.name=a"])
    assert overrides == ["--optim.lr=0.3", "--run.name=a"]
