"""Corrupt samples in a DALI shard (zero-filled, bad header, truncated) are found before DALI decodes them.

A real converted demo shard is damaged in place: the tar and its index stay valid (same sizes, same offsets),
only one JPEG's bytes change, which is what a bad disk block or an interrupted copy does. Fed to DALI's CPU
decoder such bytes crash the process with a segmentation fault most of the time (batch 64, 2 threads).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipelines.image_bytes import JPEG_TRAILER
from pipelines.meta import read_meta
from pipelines.shards import CorruptSampleError, ShardError, image_problem, jpeg_problem, open_shards

ROOT = Path(__file__).resolve().parents[1]
DAMAGE = {
    "zero_filled": lambda data: bytes(len(data)),
    "bad_header": lambda data: b"\0\0\0\0" + data[4:],
    "truncated": lambda data: data[: len(data) // 2] + bytes(len(data) - len(data) // 2),
}


def damage(folder: Path, k: int, how: str) -> str:
    """Rewrite sample k of shard 0 in place; returns its key."""
    row = (folder / "shard-00000.idx").read_text().splitlines()[k + 1].split()
    offset, size, name = int(row[1]), int(row[2]), row[3]
    tar = folder / "shard-00000.tar"
    data = bytearray(tar.read_bytes())
    data[offset : offset + size] = DAMAGE[how](bytes(data[offset : offset + size]))
    tar.write_bytes(bytes(data))
    return name.rsplit(".", 1)[0]


@pytest.fixture
def shard_copy(demo_converted, tmp_path) -> Path:
    shutil.copytree(demo_converted / "train.dali", tmp_path / "train.dali")
    shutil.copy(demo_converted / "train.meta.json", tmp_path / "train.meta.json")
    return tmp_path / "train.dali"


def test_every_converted_sample_passes_the_check(demo_converted):
    for stem in ("train", "test"):
        shards = open_shards(demo_converted / f"{stem}.dali", read_meta(demo_converted / f"{stem}.dali"))
        assert len(shards.corrupt_samples()) == 0
        everything = shards.jpegs(np.arange(len(shards)))
        assert all(jpeg_problem(v) is None for v in everything) and len(everything) == len(shards)
        shards.close()


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_a_damaged_sample_is_refused_naming_shard_key_and_index(shard_copy, how):
    key = damage(shard_copy, 5, how)
    with tarfile.open(shard_copy / "shard-00000.tar") as tf:  # still a valid tar
        assert f"{key}.jpg" in tf.getnames()
    shards = open_shards(shard_copy, read_meta(shard_copy))  # opening stays cheap: no sample is read
    n = len(shards)
    with pytest.raises(CorruptSampleError) as err:
        shards.jpegs(np.arange(n))
    msg = str(err.value)
    assert f"{shard_copy / 'shard-00000.tar'}: sample '{key}' (index 5) is corrupt" in msg
    assert ("start marker" if how != "truncated" else "end marker") in msg and "data.skip_corrupt" in msg
    assert isinstance(err.value, ShardError) and isinstance(err.value, RuntimeError)
    assert len(shards.jpegs(np.delete(np.arange(n), 5))) == n - 1  # the others are served
    assert shards.corrupt_samples().tolist() == [5]
    assert shards.corrupt_samples(np.arange(5)).tolist() == []


def test_skip_corrupt_drops_and_lists_the_bad_samples(shard_copy):
    keys = [damage(shard_copy, k, how) for k, how in ((3, "zero_filled"), (40, "truncated"))]
    whole = open_shards(shard_copy)
    shards = whole.without(whole.corrupt_samples())
    assert len(shards) == len(whole) - 2
    assert [(d["index"], d["key"], d["label"]) for d in shards.dropped] == [
        (3, keys[0], int(whole.labels[3])),
        (40, keys[1], int(whole.labels[40])),
    ]
    assert all(d["shard"].endswith("shard-00000.tar") and d["error"] for d in shards.dropped)
    assert shards.labels.tolist() == np.delete(whole.labels, [3, 40]).tolist()
    assert not set(keys) & set(shards.keys)
    served = shards.jpegs(np.arange(len(shards)))  # nothing left to refuse
    assert [bytes(v) for v in served] == [
        bytes(v) for v in whole.jpegs(np.delete(np.arange(len(whole)), [3, 40]))
    ]


# The DALI backend's feeding pattern (external source over ShardSet.jpegs, CPU decoder), in a subprocess so a
# segmentation fault is a return code, not the end of the test session.
FEED = """
import sys
import numpy as np
from nvidia.dali import fn, pipeline, types
from pipelines.shards import open_shards

shards = open_shards(sys.argv[1])
B = 64

def source(info):
    idx = np.arange(info.iteration * B, min((info.iteration + 1) * B, len(shards)))
    if not len(idx):
        raise StopIteration
    return shards.jpegs(idx), shards.labels[idx]

pipe = pipeline.Pipeline(batch_size=B, num_threads=2, device_id=None, prefetch_queue_depth=2)
with pipe:
    jpegs, labels = fn.external_source(
        source=source, num_outputs=2, batch=True, batch_info=True, dtype=[types.UINT8, types.INT64]
    )
    images = fn.resize(fn.decoders.image(jpegs, device="cpu", output_type=types.RGB), resize_shorter=56)
    pipe.set_outputs(images, labels)
pipe.build()
try:
    while True:
        pipe.run()
except StopIteration:
    print("no error")
except Exception as exc:
    print(type(exc).__name__, exc)
"""


@pytest.mark.parametrize("how", ["zero_filled", "truncated"])
def test_dali_cpu_decoding_stops_with_the_named_error_not_a_segfault(shard_copy, tmp_path, how):
    key = damage(shard_copy, 4, how)
    script = tmp_path / "feed.py"
    script.write_text(FEED)
    p = subprocess.run(
        [sys.executable, str(script), str(shard_copy)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, f"rc {p.returncode} (-11: segmentation fault)\n{p.stderr[-2000:]}"
    assert p.stdout.startswith("CorruptSampleError"), p.stdout + p.stderr[-2000:]
    assert f"shard-00000.tar: sample '{key}' (index 4) is corrupt" in p.stdout


def _damaged_copy(demo_converted, tmp_path) -> tuple[Path, str]:
    for name in ("train.meta.json", "test.meta.json"):
        shutil.copy(demo_converted / name, tmp_path)
    for name in ("train.dali", "test.dali"):
        shutil.copytree(demo_converted / name, tmp_path / name)
    return tmp_path, damage(tmp_path / "train.dali", 4, "zero_filled")


def test_the_loader_names_the_sample_or_skips_it_when_asked(demo_converted, tmp_path):
    from pipelines import DataConfig, make_loader

    data, key = _damaged_copy(demo_converted, tmp_path)
    cfg = DataConfig(backend="dali", dir=str(data), batch_size=16, resolution=16, num_workers=1)
    with pytest.raises(CorruptSampleError, match=f"'{key}' \\(index 4\\)"):
        make_loader(cfg, "train")  # found when the loader opens, before any epoch
    full = read_meta(data / "train.dali")
    with make_loader(DataConfig(**{**cfg.__dict__, "skip_corrupt": True}), "train") as loader:
        assert loader.meta.num_samples == full.num_samples - 1 and sum(loader.meta.class_counts) == 287
        assert [s["path"].rsplit(":", 1)[1] for s in loader.meta.skipped] == [key]
        labels = np.concatenate([y.numpy() for _, y in loader])
    assert len(labels) == len(loader) * 16  # every batch full: the order is drawn over the kept samples
    with pytest.raises(ValueError, match="data.skip_corrupt: only the dali backend"):
        DataConfig(backend="ffcv", skip_corrupt=True)


def test_training_on_a_damaged_shard_ends_with_a_message_not_a_crash(demo_converted, tmp_path):
    """What the issue reported: `launch.py` on a zero-filled sample died with a segmentation fault."""
    from tests.helpers import launch_failure, tiny_argv

    data, key = _damaged_copy(demo_converted, tmp_path)
    argv = tiny_argv(
        data, tmp_path, "damaged", "--data.batch_size=64", "--data.num_workers=2", backend="dali"
    )
    code, last = launch_failure(argv)
    assert code == 1  # sys.exit(message): not -11 (SIGSEGV)
    assert last.startswith("launch.py: ") and f"sample '{key}' (index 4) is corrupt" in last


def test_a_trailer_after_the_end_marker_is_accepted_but_not_a_cut_or_a_zero_filled_end(demo_converted):
    """Foreign JPEGs may carry bytes after their end marker (decoders never read them); the loader's check
    accepts up to JPEG_TRAILER of them, and still tells a sample cut or zero-filled before its end."""
    shards = open_shards(demo_converted / "test.dali", read_meta(demo_converted / "test.dali"))
    whole = bytes(shards.jpegs(np.arange(1))[0])
    shards.close()
    for trailer in (b"\0", b"\0" * 7, b"SEFT trailer", b"\0" * (JPEG_TRAILER - 1), b"\xff" * JPEG_TRAILER):
        assert image_problem(whole + trailer) is None and jpeg_problem(whole + trailer) is not None
    assert "last 4098 bytes" in image_problem(whole + b"\0" * (JPEG_TRAILER + 1))
    half = whole[: len(whole) // 2]
    for cut in (half, half + bytes(len(whole) - len(half)), whole[:-1], whole[:-2] + b"\0\0"):
        assert "no JPEG end marker" in image_problem(cut)
