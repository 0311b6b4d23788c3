"""DBM-GML's two stages end to end through `launch.main` on the demo data (ResNet-8-sized stand-ins): a
teacher epoch, then a student epoch whose recipe names the teacher's run folder, eager and compiled; the
errors for a missing or mismatched teacher; a resumed student equals an uninterrupted one (its queue
included, even after the teacher's folder gained a newer checkpoint); two processes; the recipes pair up."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import launch
import losses
from tests.helpers import RESUME, assert_same_run, free_port, interrupted_run, tiny_argv
from trainer import checkpoint, rundir
from trainer.checkpoint import CheckpointError
from trainer.recipe import load_config

ROOT = Path(__file__).resolve().parents[1]
# numba prints a harmless KeyError from a finalizer of FFCV's compiled functions, never a failure of ours.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
TEACHER = ("--loss.name=dbm_bs", "--loss.scale=30", "--loss.max_margin=0")


def student_args(teacher: Path, *extra: str) -> tuple[str, ...]:
    """The student recipe's GML keys, shrunk: a 48-key queue (12 classes x base 2 + 24 shared), 8-d heads."""
    return (
        "--loss.name=dbm_gml",
        f"--model.teacher={teacher}",
        "--model.teacher_arch=resnet_tiny",
        "--model.gml_queue_size=48",
        "--model.gml_base_k=2",
        "--model.gml_embed_dim=8",
        *extra,
    )


def compiled(mode: str) -> tuple[str, ...]:
    return (f"--step.mode={mode}", "--step.compile_backend=aot_eager") if mode == "compile" else ()


# The large-scale recipes' views: jitter on every view, grayscale and blur on views 1.. (the teacher's q, the
# student's q and k).
VIEWS = ("--data.jitter=[0.4, 0.4, 0.4, 0.0]", "--data.view_grayscale=0.2", "--data.view_blur=0.5")


@pytest.mark.parametrize("mode", ["eager", pytest.param("compile", marks=pytest.mark.slow)])
def test_teacher_then_student_epoch(demo_converted, tmp_path, mode):
    """As the large-scale recipes: a two-view teacher (`model.bn_views = 2`), the release's views."""
    argv = tiny_argv(
        demo_converted, tmp_path, "teacher", *TEACHER, *VIEWS, "--model.bn_views=2", *compiled(mode)
    )
    teacher = launch.main(argv)
    assert teacher["final"]["top1"] is not None
    student = launch.main(
        tiny_argv(
            demo_converted, tmp_path, "student", *student_args(tmp_path / "teacher"), *VIEWS, *compiled(mode)
        )
    )
    run = tmp_path / "student"
    (rec,) = rundir.read_metrics(run)
    assert math.isfinite(rec["loss"]) and rec["loss"] > 0 and 0 <= student["final"]["top1"] <= 1
    assert (
        student["eval_samples"] == json.loads((demo_converted / "test.meta.json").read_text())["num_samples"]
    )
    state = checkpoint.load_latest(run)["model"]
    teacher_state = checkpoint.load_latest(tmp_path / "teacher")["model"]
    # The frozen teacher, BatchNorm statistics included, is in the student's checkpoint, unchanged.
    for key, value in teacher_state.items():
        assert torch.equal(state[f"teacher.{key}"], value), key
    steps = int(state["steps"])
    assert steps == rec["steps"] > 0
    ids = state["queue.ids"][:48]
    assert ids.max() < steps * 16 and (ids >= 0).sum() > 24  # most slots now hold keys of this run
    assert state["log_temperature"].exp().item() != pytest.approx(0.1)  # T_c learned
    assert torch.isfinite(state["queue.keys"]).all()


def test_a_missing_or_mismatched_teacher_stops_before_the_run_folder(demo_converted, tmp_path):
    with pytest.raises(CheckpointError, match=r"model\.teacher: .*nowhere does not exist"):
        launch.main(tiny_argv(demo_converted, tmp_path, "s1", *student_args(tmp_path / "nowhere")))
    assert not (tmp_path / "s1").exists()
    with pytest.raises(CheckpointError, match="model.teacher is empty"):
        launch.main(tiny_argv(demo_converted, tmp_path, "s2", "--loss.name=dbm_gml"))
    launch.main(tiny_argv(demo_converted, tmp_path, "teacher", *TEACHER, "--run.eval_every=0"))
    argv = tiny_argv(
        demo_converted, tmp_path, "s3", *student_args(tmp_path / "teacher"), "--model.teacher_arch=resnet8"
    )
    with pytest.raises(CheckpointError, match=r"epoch-0001\.pt holds a resnet_tiny, but model\.teacher_arch"):
        launch.main(argv)
    assert not (tmp_path / "s3").exists()


@pytest.mark.parametrize("backend", ["ffcv", "dali"])
def test_resumed_student_equals_an_uninterrupted_one(
    demo_converted, tmp_path, monkeypatch, one_thread, backend
):
    """RESUME's crop, flip, AutoAugment and Cutout on all three views (cls, q, k), each its own draws."""
    launch.main(tiny_argv(demo_converted, tmp_path, "teacher", *TEACHER, "--run.eval_every=0"))
    args = student_args(tmp_path / "teacher", *RESUME)
    launch.main(tiny_argv(demo_converted, tmp_path, "straight", *args, backend=backend))

    interrupted_run(tiny_argv(demo_converted, tmp_path, "resumed", *args, backend=backend), monkeypatch)
    run = tmp_path / "resumed"
    assert checkpoint.load_latest(run)["epoch"] == 1

    # Meanwhile the teacher's folder gains a newer checkpoint with other weights: the resumed student keeps
    # the teacher its checkpoint holds (the folder only gives the architecture again).
    newer = checkpoint.load_latest(tmp_path / "teacher")
    newer.pop("path")
    newer["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in newer["model"].items()}
    newer["epoch"] = 2
    checkpoint.save_checkpoint(checkpoint.checkpoint_path(tmp_path / "teacher", 2), newer)

    # ... and is then moved away: the student's checkpoint holds its teacher, its config names the file.
    used = str(checkpoint.checkpoint_path(tmp_path / "teacher", 1))
    assert load_config(run / "config.toml").model.teacher == used
    (tmp_path / "teacher").rename(tmp_path / "moved")
    with pytest.raises(CheckpointError, match=r"--model.teacher=.*moved would change the model"):
        launch.main(["--resume", str(run), f"--model.teacher={tmp_path / 'moved'}"])
    launch.main(["--resume", str(run)])
    assert load_config(run / "config.toml").model.teacher == used
    a, _ = assert_same_run(tmp_path / "straight", run)
    assert a["epoch"] == 2
    assert {"queue.keys", "queue.ids", "queue.pointers", "steps", "log_temperature"} <= set(a["model"])


@pytest.mark.slow
def test_two_processes_train_a_student(demo_converted, tmp_path):
    """torchrun with two CPU processes: DDP around the student with SyncBN, as the large-scale recipes
    (frozen teacher, the queue's buffers left out of DDP's broadcast, keys gathered across ranks) trains an
    epoch; both ranks' queues are one queue, so the checkpoint's holds keys of the whole global batch."""
    launch.main(tiny_argv(demo_converted, tmp_path, "teacher", *TEACHER, "--run.eval_every=0"))
    argv = tiny_argv(
        demo_converted, tmp_path, "ddp", *student_args(tmp_path / "teacher"), "--model.sync_bn=true"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(free_port()), str(ROOT / "launch.py"), *argv]
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    run = tmp_path / "ddp"
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    state = checkpoint.load_latest(run)["model"]
    steps = int(state["steps"])
    ids = state["queue.ids"][:48]
    # Keys of images 8..15 of a step come from rank 1: the queue gathered them.
    assert ((ids >= 0) & (ids % 16 >= 8)).any() and ((ids >= 0) & (ids % 16 < 8)).any()
    assert ids.max() < steps * 16


GML_RECIPES = {  # student recipe -> its teacher's recipe
    "cifar100_lt_dbm_gml": "cifar100_lt_gml_teacher",
    "imagenet_lt_dbm_gml": "imagenet_lt_gml_teacher",
    "inat2018_dbm_gml": "inat2018_gml_teacher",
}


@pytest.mark.parametrize("student", GML_RECIPES)
def test_the_recipes_pair_students_with_their_teachers(student):
    cfg = load_config(ROOT / "configs" / f"{student}.toml")
    teacher = load_config(ROOT / "configs" / f"{GML_RECIPES[student]}.toml")
    assert cfg.loss.name == "dbm_gml" and losses.loss_class(cfg.loss.name).view_recipe == "classification"
    assert Path(cfg.model.teacher) == Path(teacher.run.out_dir) / teacher.run.name
    assert cfg.model.teacher_arch == teacher.model.arch
    assert (cfg.data.dir, cfg.data.train, cfg.data.mean) == (
        teacher.data.dir,
        teacher.data.train,
        teacher.data.mean,
    )
    assert teacher.loss.name == "dbm_bs" and teacher.loss.max_margin == 0 and teacher.loss.scale == 30
    assert (cfg.optim.schedule, cfg.run.epochs) == (teacher.optim.schedule, teacher.run.epochs)
    assert cfg.loss.max_margin == 0.1
    assert cfg.loss.gml_alpha == (1.0 if student.startswith("cifar") else 0.0)
