"""`launch.main` end to end on the converted demo data: one epoch per backend and the run folder it writes."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import launch
from tests.helpers import slurm_dry_run, tiny_argv
from trainer import checkpoint, rundir
from trainer.config import ConfigError
from trainer.recipe import launcher_precision, load_config

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
    assert not list(run.rglob("*tmp"))  # atomic writes leave no temporaries


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


def test_accelerates_mixed_precision_flag_maps_to_the_step(monkeypatch):
    """`accelerate launch --mixed_precision X` exports ACCELERATE_MIXED_PRECISION=X for every process."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert launcher_precision(["--run.name=a"]) == ["--run.name=a", "--step.precision=bf16"]
    assert launcher_precision(["--step.precision=bf16"])[-1] == "--step.precision=bf16"
    with pytest.raises(ConfigError, match="--mixed_precision bf16 and --step.precision=fp32 disagree"):
        launcher_precision(["--step.precision=fp32"])
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(ConfigError, match="--mixed_precision fp16: fastlt's step runs in bf16 or fp32"):
        launcher_precision([])
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # accelerate's default: the recipe decides
    assert launcher_precision(["--step.precision=fp32"]) == ["--step.precision=fp32"]
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    cfg = load_config("configs/demo.toml", launcher_precision([]))
    assert cfg.step.precision == "fp32"  # the recipe's own value


def test_the_slurm_script_resolves_one_accelerate_launch_per_node(tmp_path):
    """`DRY_RUN=1` prints each node's command; each parses with accelerate's own launch parser."""
    import subprocess

    from accelerate.commands.launch import launch_command_parser

    env = {"SLURM_NNODES": "2", "GPUS_PER_NODE": "8", "MASTER_ADDR": "10.1.2.3"}
    nodes = slurm_dry_run("--config", "configs/demo.toml", "--data.dir=/shared/d", **env)
    assert [label for label, _ in nodes] == ["node 0", "node 1"]
    for rank, (_, argv) in enumerate(nodes):
        assert argv[:3] == [".venv/bin/python", "-m", "accelerate.commands.launch"]
        args = launch_command_parser().parse_args(argv[3:])
        assert (args.num_machines, args.num_processes, args.machine_rank) == (2, 16, rank)
        assert (args.main_process_ip, args.main_process_port, args.multi_gpu) == ("10.1.2.3", 29500, True)
        assert args.training_script == "launch.py"
        assert args.training_script_args == ["--config", "configs/demo.toml", "--data.dir=/shared/d"]
    with pytest.raises(subprocess.CalledProcessError) as failed:  # a non-zero exit
        slurm_dry_run(**{**env, "MASTER_ADDR": None, "SLURM_JOB_NODELIST": None})
    assert "not inside a SLURM job: set MASTER_ADDR" in failed.value.stderr


def test_a_dbm_loss_describes_its_margins_and_warns_when_the_normalisers_differ():
    """What a run logs when it builds its loss (trainer.build): the margin range, and a warning."""
    from losses import build_loss

    counts = (10, 5, 2, 4)  # the last label is not the rarest class: "last" doubles every margin
    cfg = load_config(None, ["--loss.name=dbm_ce"])
    (info, first), (warning, second) = build_loss(cfg.loss, counts).describe(counts)
    assert (info, warning) == (logging.INFO, logging.WARNING)
    assert first == "DBM class margins (loss.margin_norm=min): 0.0200 .. 0.1000"
    assert "'last' (the released code) gives every class a margin 100.0% larger" in second
    assert "the last label has 4 images, the rarest class 2; this run uses 'min'" in second
    sorted_counts = (10, 5, 4, 2)
    assert [lvl for lvl, _ in build_loss(cfg.loss, sorted_counts).describe(sorted_counts)] == [logging.INFO]
    assert build_loss("ce", counts).describe(counts) == []  # no margins: nothing to say


def test_keeping_the_last_partial_batch(demo_converted, tmp_path):
    """data.drop_last = false: 288 images at batch 20 make 15 steps, the last of 8 images (the official
    codes' DataLoaders keep it); the compiled step takes the short shape too."""
    argv = tiny_argv(
        demo_converted,
        tmp_path,
        "keep",
        "--data.drop_last=false",
        "--data.batch_size=20",
        "--step.mode=compile",
        "--step.compile_backend=aot_eager",
    )
    launch.main(argv)
    (record,) = rundir.read_metrics(tmp_path / "keep")
    assert record["steps"] == 15 and record["loss"] > 0
