"""What a conversion does to an --out that already holds something: a format not asked for is kept (and the
meta lists both), a replaced output is named, abandoned partial folders of killed runs are swept, and an
unusable --out or a full disk is one line that names the path and leaves --out as it was."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time

import pytest

from pipelines.convert import beton as beton_mod
from pipelines.convert import staging as staging_mod
from pipelines.convert import wds as wds_mod
from pipelines.meta import read_meta
from tests.convert_util import CLI, ROOT, write_image_tree, write_list, write_slow_tree
from tests.convert_util import convert_tree as _convert_tree


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "images"
    write_list(root / "train.txt", write_image_tree(root, [5, 3, 2]))
    return root


def convert_tree(tree, out, *extra, **kw):
    """The CLI without progress lines: stderr holds only what these tests read."""
    return _convert_tree(tree, out, "--no-progress", *extra, **kw)


def snapshot(out):
    """Every file under `out` with its bytes and mtime: what 'left as it was' means."""
    return {
        str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()
    }


def one_line(stderr, notices=0):
    """The error line, after `notices` lines saying what is replaced or kept; never a traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == notices + 1 and "Traceback" not in stderr, stderr
    assert all(line.startswith("convert_datasets: ") for line in lines), stderr
    return lines[-1]


@pytest.mark.parametrize("first, then", [("ffcv", "dali"), ("dali", "ffcv")])
def test_adding_a_format_keeps_the_other_and_the_meta_lists_both(tree, tmp_path, first, then):
    out = tmp_path / "out"
    convert_tree(tree, out, "--formats", first, check_rc=0)
    kept = {k: v for k, v in snapshot(out).items() if not k.endswith(".meta.json")}
    kept_entry = read_meta(out / "train.meta.json").formats[first]
    p = convert_tree(tree, out, "--formats", then, check_rc=0)  # adding needs no --overwrite
    names = {"ffcv": "train.beton", "dali": "train.dali"}
    assert f"train: adding {names[then]} to {out} (keeping {names[first]}" in one_line(p.stderr)
    assert {k: v for k, v in snapshot(out).items() if k in kept} == kept  # untouched, byte for byte
    meta = read_meta(out / "train.meta.json")
    assert set(meta.formats) == {"ffcv", "dali"} and meta.formats[first] == kept_entry
    assert meta.formats["ffcv"]["samples_digest"] == meta.formats["dali"]["samples_digest"]
    assert meta.class_counts == (5, 3, 2)

    p = convert_tree(tree, out, "--formats", then, "--overwrite", check_rc=0)  # replace only `then`
    line = one_line(p.stderr)
    assert f"replacing {out / names[then]} (keeping {names[first]}; train.meta.json lists both)" in line
    assert {k: v for k, v in snapshot(out).items() if k in kept} == kept
    assert read_meta(out / "train.meta.json").formats[first] == kept_entry


def test_a_kept_format_with_other_samples_is_refused_before_anything_is_written(tree, tmp_path):
    out = tmp_path / "out"
    convert_tree(tree, out, "--formats", "ffcv", check_rc=0)
    before = snapshot(out)
    p = convert_tree(tree, out, "--formats", "dali", "--seed", "3", check_rc=2)
    line = one_line(p.stderr)
    assert f"{out / 'train.beton'} is kept, but this conversion differs from it (seed 0 -> 3)" in line
    assert "--formats ffcv,dali --overwrite to replace both" in line and "nothing was written" in line
    # the same counts from another list: found only at the end, by the digest of the (path, label) sequence
    rows = (tree / "train.txt").read_text().splitlines()
    swapped = [r for r in rows if r.endswith(" 0")][:1] + [r for r in rows if not r.endswith(" 0")]
    swapped += [r for r in rows if r.endswith(" 0")][1:]
    (tree / "train.txt").write_text("\n".join(swapped[::-1]) + "\n")
    p = convert_tree(tree, out, "--formats", "dali", "--overwrite", check_rc=2)
    assert "(path, label) sequence differs from train.beton's" in one_line(p.stderr, notices=1)
    assert snapshot(out) == before and not [n for n in os.listdir(out) if n.startswith(".")]
    convert_tree(tree, out, "--formats", "ffcv,dali", "--overwrite", check_rc=0)  # the way out it names


def test_a_format_not_in_the_meta_is_not_kept_blindly(tree, tmp_path):
    out = tmp_path / "out"
    convert_tree(tree, out, "--formats", "ffcv", check_rc=0)
    (out / "train.dali").mkdir()  # a stray folder nothing describes
    p = convert_tree(tree, out, "--formats", "ffcv", "--overwrite", check_rc=2)
    assert f"{out / 'train.dali'} is not listed in {out / 'train.meta.json'}" in one_line(p.stderr)


def test_partial_folder_of_a_killed_conversion_is_removed_at_the_next_run(tree, tmp_path):
    big = write_slow_tree(tmp_path / "big")
    out = tmp_path / "out"
    out.mkdir()
    args = ["imagenet_lt", "--root", big, "--split-file", big / "big.txt", "--out", out, "--workers", "1"]
    proc = subprocess.Popen([*map(str, CLI), *map(str, args)], cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    partial = []
    while not partial and time.time() < deadline and proc.poll() is None:
        partial = [p for p in out.iterdir() if (p / staging_mod.OWNER).is_file()]
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.skip("the conversion finished before it could be killed")
    proc.send_signal(signal.SIGKILL)  # no handler runs: the hidden folder stays
    if proc.wait(timeout=30) != -signal.SIGKILL or not partial[0].exists():
        pytest.skip("the conversion finished before the signal landed (a very loaded machine)")
    assert partial[0].name.startswith(f".big.partial-{proc.pid}-")
    p = convert_tree(tree, out, check_rc=0)  # another stem, the same --out
    assert f"removed {partial[0]} (" in p.stderr and f"pid {proc.pid}" in p.stderr and "gone" in p.stderr
    assert not partial[0].exists() and sorted(os.listdir(out)) == [
        "train.beton",
        "train.dali",
        "train.meta.json",
    ]


def test_partial_folders_not_provably_abandoned_are_reported_with_their_size(tree, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    unknown = out / ".old.partial-abc"  # no owner record: an older converter, or another machine
    unknown.mkdir()
    (unknown / "old.beton").write_bytes(os.urandom(300_000))
    live = out / ".other.partial-xyz"  # a conversion of another stem that is still running: this test
    live.mkdir()
    (live / staging_mod.OWNER).write_text(json.dumps(staging_mod._owner_record()))
    p = convert_tree(tree, out, check_rc=0)
    assert f"found {unknown} (3" in p.stderr and "KB): a partial conversion (no owner record)" in p.stderr
    assert f"found {live} (" in p.stderr and f"a conversion in progress (pid {os.getpid()}" in p.stderr
    assert unknown.exists() and live.exists()
    same_stem = out / ".train.partial-123"  # and one of the stem we convert: the two commits would race
    same_stem.mkdir()
    (same_stem / staging_mod.OWNER).write_text(json.dumps(staging_mod._owner_record()))
    p = convert_tree(tree, out, "--overwrite", check_rc=2)
    assert f"another conversion of 'train' (pid {os.getpid()}" in one_line(p.stderr)


def test_out_that_is_a_file_or_under_a_file_is_one_line(tree, tmp_path):
    f = tmp_path / "taken"
    f.write_text("mine")
    p = convert_tree(tree, f, check_rc=2)
    assert (
        one_line(p.stderr)
        == f"convert_datasets: error: --out {f} is a file, not a folder; it was left as it was"
    )
    p = convert_tree(tree, f / "sub" / "out", check_rc=2)
    assert f"--out {f / 'sub' / 'out'}: {f} is a file" in one_line(p.stderr)
    assert f.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["images", "taken"]


def test_read_only_out_is_one_line(tree, tmp_path, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    if os.geteuid() == 0:  # root writes through file modes: inject the error a read-only mount gives
        real_mkdir = os.mkdir

        def read_only(path, *a, **k):
            if str(path).startswith(str(out) + os.sep):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_mkdir(path, *a, **k)

        monkeypatch.setattr(os, "mkdir", read_only)
    else:
        out.chmod(0o555)
    try:
        p = convert_tree(tree, out, check_rc=2)
    finally:
        out.chmod(0o755)
    line = one_line(p.stderr)
    assert (
        line.startswith(f"convert_datasets: error: --out {out}: cannot write there (") and "as it was" in line
    )
    assert os.listdir(out) == ["keep.txt"]


@pytest.mark.parametrize("module, fmt", [(wds_mod, "dali"), (beton_mod, "ffcv")])
def test_full_disk_names_the_file_and_leaves_out_as_it_was(tree, tmp_path, monkeypatch, module, fmt):
    out = tmp_path / "out"
    convert_tree(tree, out, "--formats", "ffcv,dali", check_rc=0)
    before = snapshot(out)

    class FullDisk:  # the disk fills after 2 KB: writes raise ENOSPC, as the kernel's write() does
        def __init__(self, path, *a, **k):
            self._f, self._left = open(path, *a, **k), 2048  # noqa: SIM115

        def write(self, b):
            self._left -= len(b)
            if self._left < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._f.write(b)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(module, "open", FullDisk, raising=False)
    p = convert_tree(tree, out, "--formats", fmt, "--overwrite", check_rc=1)
    line = one_line(p.stderr, notices=1)  # "train: replacing ... (keeping ...)", then the error
    target = out / ("train.dali/shard-00000.tar" if fmt == "dali" else "train.beton")
    assert f"cannot write {target}: No space left on device; {out} was left as it was" in line
    assert snapshot(out) == before and not [n for n in os.listdir(out) if n.startswith(".")]
