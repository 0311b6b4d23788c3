"""Nothing silently wrong, nothing lost: a diverged run stops and says so,
counts that do not match the labels are refused, a failed resume leaves the run folder as it was, older
checkpoints survive a damaged newest one, interrupted writes are cleaned up, errors are one line."""

from __future__ import annotations

import errno
import json
import shutil

import pytest

import launch
from pipelines import DataConfig, MetaError, make_loader
from tests.helpers import launch_failure, tiny_argv
from trainer import checkpoint, history, rundir
from trainer.checkpoint import CheckpointError
from trainer.config import ConfigError, to_dict
from trainer.loop import DivergedError
from trainer.recipe import load_config

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def test_a_diverged_run_stops_records_it_and_checkpoints_nothing(demo_converted, tmp_path):
    argv = tiny_argv(demo_converted, tmp_path, "diverged", "--optim.lr=1e12", "--run.log_every=1")
    with pytest.raises(DivergedError, match=r"loss is (nan|inf) at epoch 1, step \d+/18, lr [\d.e+]+"):
        launch.main(argv)
    run = tmp_path / "diverged"
    (record,) = rundir.read_metrics(run)
    assert record["epoch"] == 1 and record["loss"] in ("nan", "inf")  # not null, which means "not measured"
    assert record["diverged_at_step"] >= 1
    assert not checkpoint.checkpoints(run) and not (run / rundir.RESULTS_FILE).exists()


def _copy_split(src, dst, stem, suffix):
    dst.mkdir(exist_ok=True)
    shutil.copy(src / f"{stem}.meta.json", dst)
    data = src / f"{stem}{suffix}"
    (shutil.copytree if data.is_dir() else shutil.copy)(data, dst / data.name)


@pytest.mark.parametrize("backend,suffix", [("ffcv", ".beton"), ("dali", ".dali")])
def test_class_counts_must_match_the_labels(demo_converted, tmp_path, backend, suffix):
    _copy_split(demo_converted, tmp_path, "train", suffix)
    meta_file = tmp_path / "train.meta.json"
    meta = json.loads(meta_file.read_text())
    meta["class_counts"] = meta["class_counts"][::-1]  # same total, same classes: only the order is wrong
    meta_file.write_text(json.dumps(meta))
    cfg = DataConfig(backend=backend, dir=str(tmp_path), batch_size=8, resolution=16, num_workers=1)
    with pytest.raises(
        MetaError, match=r"train.meta.json: class_counts\[0\] = 6 but .* holds 60 images of class 0"
    ):
        make_loader(cfg, "train")


def _finished_run(demo_converted, tmp_path, name, *extra):
    argv = tiny_argv(demo_converted, tmp_path, name, "--loss.name=dbm_ce", "--loss.scale=16", *extra)
    launch.main(argv)
    return tmp_path / name


def test_a_failed_resume_leaves_the_run_folder_as_it_was(demo_converted, tmp_path):
    run = _finished_run(demo_converted, tmp_path, "kept")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match="run.epochz"):
        launch.main(["--resume", str(run), "--run.epochz=3"])
    with pytest.raises(CheckpointError, match=r"--loss.name=ce would change the model .* start a new run"):
        launch.main(["--resume", str(run), "--loss.name=ce"])
    with pytest.raises(CheckpointError, match="--model.arch=resnet8 would change the model"):
        launch.main(["--resume", str(run), "--model.arch=resnet8"])
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        launch.main(["--resume", str(run), f"--data.dir={tmp_path / 'elsewhere'}", "--run.epochs=2"])
    with pytest.raises(
        ConfigError, match=r"run.epochs=1: the run in .* already finished epoch 1; give --run"
    ):
        launch.main(["--resume", str(run)])  # not "resuming after epoch 1 of 1" and nothing trained
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    launch.main(["--resume", str(run), "--run.epochs=2"])  # a plain resume still works afterwards
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2]


def test_resume_falls_back_to_an_older_checkpoint_and_cleans_interrupted_writes(
    demo_converted, tmp_path, caplog
):
    run = _finished_run(
        demo_converted,
        tmp_path,
        "fallback",
        "--run.epochs=3",
        "--run.checkpoint_every=1",
        "--run.eval_every=0",
    )
    assert [p.name for p in checkpoint.checkpoints(run)] == ["epoch-0003.pt", "epoch-0002.pt"]  # keep 2
    newest = checkpoint.checkpoints(run)[0]
    newest.write_bytes(newest.read_bytes()[:1000])  # damaged after it was written
    stale = run / rundir.CHECKPOINT_DIR / ".epoch-0004.pt.abc123.fastlt-tmp"
    stale.write_bytes(bytes(3 << 20))  # what a kill during a save leaves
    with caplog.at_level("WARNING"):
        launch.main(["--resume", str(run), "--run.epochs=4"])
    assert "epoch-0003.pt: cannot read checkpoint" in caplog.text and "falling back" in caplog.text
    assert ".epoch-0004.pt.abc123.fastlt-tmp (3.0 MB)" in caplog.text and not stale.exists()
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2, 3, 4]  # epoch 3 trained again
    assert [p.name for p in checkpoint.checkpoints(run)] == ["epoch-0004.pt", "epoch-0003.pt"]


def test_a_full_disk_while_checkpointing_names_the_file_and_keeps_the_others(tmp_path, monkeypatch):
    first = checkpoint.checkpoint_path(tmp_path, 1)
    checkpoint.save_checkpoint(first, {"epoch": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("pipelines.fileio.os.replace", full)
    second = checkpoint.checkpoint_path(tmp_path, 2)
    with pytest.raises(CheckpointError, match=r"epoch-0002.pt: cannot write the checkpoint \(No space left"):
        checkpoint.save_checkpoint(second, {"epoch": 2})
    monkeypatch.undo()
    assert checkpoint.checkpoints(tmp_path) == [first]
    assert checkpoint.load_latest(tmp_path)["epoch"] == 1
    assert not list(first.parent.glob(".*.fastlt-tmp"))


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_data_errors_are_one_line(demo_converted, tmp_path, damage):
    data = tmp_path / "data"
    _copy_split(demo_converted, data, "train", ".beton")
    _copy_split(demo_converted, data, "test", ".beton")
    beton = data / "train.beton"
    if damage == "missing":
        beton.unlink()
    else:
        beton.write_bytes(beton.read_bytes()[:4096])
    argv = tiny_argv(data, tmp_path, "broken")
    _, last = launch_failure(argv)
    assert last.startswith("launch.py: ") and "train.beton" in last, last
    assert not (tmp_path / "broken").exists()  # nothing was written for a run that could not start


@pytest.mark.parametrize(
    "override", ["ncl_queue=512", "ncl_experts=2", "gml_queue_size=2048", "gml_base_k=4"]
)
def test_a_resume_names_the_queue_or_expert_key_it_would_change(override):
    saved = {"config": to_dict(load_config(None)), "path": "run/epoch-0001.pt"}
    key, value = override.split("=")
    with pytest.raises(
        CheckpointError, match=rf"--model.{key}={value} would change the model .*epoch-0001.pt"
    ):
        history.check_compatible(saved, load_config(None, [f"--model.{override}"]))
    history.check_compatible(saved, load_config(None, ["--run.epochs=7"]))  # a harmless override passes


def test_a_checkpoint_damaged_inside_a_tensor_is_named_and_the_older_one_used(tmp_path, caplog):
    import torch

    weights = torch.arange(4096, dtype=torch.float32)
    for epoch in (1, 2):
        checkpoint.save_checkpoint(
            checkpoint.checkpoint_path(tmp_path, epoch), {"epoch": epoch, "w": weights}
        )
    newest = checkpoint.checkpoints(tmp_path)[0]
    data = bytearray(newest.read_bytes())
    at = bytes(data).find(weights.numpy().tobytes()) + 1000  # inside the tensor's stored bytes
    data[at] ^= 0x10  # one flipped bit: the zip still unpacks, the tensor still loads
    newest.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        state = checkpoint.load_latest(tmp_path)
    assert state["epoch"] == 1 and state["path"].endswith("epoch-0001.pt")
    assert "epoch-0002.pt: checksum mismatch" in caplog.text and "falling back" in caplog.text
    legacy = checkpoint.checkpoint_path(tmp_path, 3)  # written before checksums: still loads
    torch.save({"format_version": 1, "epoch": 3}, legacy)
    assert checkpoint.load_latest(tmp_path)["epoch"] == 3


def test_the_sweep_of_interrupted_writes_leaves_a_users_tmp_files(tmp_path):
    from pipelines.fileio import atomic_write_text

    atomic_write_text(tmp_path / "config.toml", "x = 1\n")
    ours = tmp_path / ".config.toml.k2j3.fastlt-tmp"
    ours.write_text("partial")
    theirs = [tmp_path / ".notes.tmp", tmp_path / ".config.toml.mine.tmp"]
    for path in theirs:
        path.write_text("a user's file")
    assert [p for p, _ in rundir.clean_stale(tmp_path)] == [ours]
    assert all(p.exists() for p in theirs) and (tmp_path / "config.toml").read_text() == "x = 1\n"


def test_the_shared_folder_check_waits_for_a_token_that_appears_late(tmp_path):
    """On NFS a node may not see rank 0's run folder for up to a minute (a cached failed lookup): the check
    keeps looking (listing the folders, which revalidates the cache) until the token shows up."""
    import threading
    import time

    run_dir = tmp_path / "runs" / "late"
    path = run_dir / rundir.SHARED_CHECK_FILE

    def rank0_writes_late() -> None:
        time.sleep(0.4)
        run_dir.mkdir(parents=True)
        path.write_text("token")

    writer = threading.Thread(target=rank0_writes_late)
    start = time.monotonic()
    writer.start()
    try:
        assert rundir.sees_token(path, "token", timeout=20, poll=0.05)
    finally:
        writer.join()
    assert time.monotonic() - start >= 0.4


def test_the_shared_folder_check_names_the_node_and_rank_that_never_see_the_token(tmp_path):
    path = tmp_path / "run" / rundir.SHARED_CHECK_FILE
    assert not rundir.sees_token(path, "token", timeout=0.2, poll=0.05)
    path.parent.mkdir()
    path.write_text("another run's token")
    assert not rundir.sees_token(path, "token", timeout=0.1, poll=0.05)
    assert rundir.blind_error(path.parent, [("node-a", 0, True), ("node-a", 1, True)]) is None
    err = rundir.blind_error(path.parent, [("node-a", 0, True), ("node-b", 3, False), ("node-b", 2, False)])
    assert isinstance(err, rundir.RunDirError)
    assert (
        f"run folder {path.parent} is not shared between the nodes: rank 2 on node-b, rank 3 on node-b"
        in str(err)
    )


def test_nodes_are_told_apart_under_any_launcher(monkeypatch):
    """By host name, and by the launcher's node index where it sets one (nodes simulated on one host)."""
    import socket

    host = socket.gethostname()
    for var in ("GROUP_RANK", "SLURM_NODEID", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert rundir.node_name() == host
    monkeypatch.setenv("SLURM_NODEID", "3")  # plain srun: no LOCAL_WORLD_SIZE
    assert rundir.node_name() == f"{host} (node 3)"
    monkeypatch.setenv("GROUP_RANK", "1")  # torchrun
    assert rundir.node_name() == f"{host} (node 1)"
    with pytest.raises(ValueError, match="run.shared_check_s: must be >= 0"):
        load_config(None, ["--run.shared_check_s=-1"])
    assert load_config(None, ["--run.shared_check_s=2"]).run.shared_check_s == 2
