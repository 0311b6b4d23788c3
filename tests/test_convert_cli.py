"""The contract CLI end to end, and every error path: a failed conversion names the file and its line, and
leaves nothing behind in --out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from pipelines.convert import ConvertOptions, SplitRequest, convert
from pipelines.convert import wds as wds_mod
from pipelines.convert.readers.cifar import cifar_lt_counts
from pipelines.meta import read_meta
from tests.convert_util import (
    CLI,
    ROOT,
    convert_tree,
    run_cli,
    write_cifar,
    write_image_tree,
    write_list,
    write_slow_tree,
)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "images"
    items = write_image_tree(root, [5, 3, 2])
    write_list(root / "train.txt", items)
    return root


def lines_of(root):
    return [ln.rsplit(None, 1) for ln in (root / "train.txt").read_text().splitlines()]


def listing(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else None


def test_cli_converts_and_prints_a_summary(tree, tmp_path):
    out = tmp_path / "out"
    p = convert_tree(tree, out, "--workers", "2", check_rc=0, in_process=False)
    assert "train: 10 images, 3 classes" in p.stdout and "images/s" in p.stdout
    meta = read_meta(out / "train.meta.json")
    assert meta.class_counts == (5, 3, 2) and meta.max_resolution == 512 and meta.jpeg_quality == 90
    assert set(meta.formats) == {"ffcv", "dali"} and meta.skipped == ()
    assert oct((out / "train.meta.json").stat().st_mode & 0o777) != oct(0o600)


def test_cli_formats_subset(tree, tmp_path):
    convert_tree(tree, tmp_path / "o", "--formats", "dali", dataset="places_lt", check_rc=0)
    assert listing(tmp_path / "o") == [
        "train.dali",
        "train.dali/shard-00000.idx",
        "train.dali/shard-00000.tar",
        "train.meta.json",
    ]
    assert set(json.loads((tmp_path / "o" / "train.meta.json").read_text())["formats"]) == {"dali"}


@pytest.mark.parametrize("damage", ["missing", "truncated", "not_an_image", "empty"])
@pytest.mark.parametrize("out_exists", [False, True])
def test_bad_image_fails_naming_file_and_line_and_leaves_nothing(tree, tmp_path, damage, out_exists):
    rows = lines_of(tree)
    bad_line = 4
    bad = tree / rows[bad_line - 1][0]
    if damage == "missing":
        bad.unlink()
    elif damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:300])
    elif damage == "not_an_image":
        bad.write_text("hello")
    else:
        bad.write_bytes(b"")
    out = tmp_path / "out" / "nested"
    if out_exists:
        out.mkdir(parents=True)
        (out / "keep.txt").write_text("mine")
    before = listing(tmp_path / "out")
    p = convert_tree(tree, out, "--workers", "2", in_process=damage != "truncated")
    assert p.returncode == 1
    assert str(bad) in p.stderr and f"train.txt line {bad_line}" in p.stderr, p.stderr
    assert listing(tmp_path / "out") == before  # nothing added (not even --out itself when it was not there)


def test_skip_bad_lists_skipped_images_in_meta(tree, tmp_path):
    rows = lines_of(tree)
    (tree / rows[1][0]).unlink()
    (tree / rows[6][0]).write_bytes(b"\xff\xd8\xff\xe0 broken")
    out = tmp_path / "out"
    p = convert_tree(tree, out, "--skip-bad", check_rc=0)
    assert "2 skipped" in p.stdout
    meta = read_meta(out / "train.beton")
    assert meta.num_samples == 8
    skipped = sorted(meta.skipped, key=lambda s: s["line"])
    assert [(s["path"], s["line"]) for s in skipped] == [(rows[1][0], 2), (rows[6][0], 7)]
    assert skipped[0]["error"] == "file not found" and skipped[1]["error"]
    counts = [5, 3, 2]
    for s in skipped:
        counts[int(rows[s["line"] - 1][1])] -= 1
    assert list(meta.class_counts) == counts
    assert sum(meta.formats["dali"]["samples_per_shard"]) == 8


def test_existing_outputs_need_overwrite(tree, tmp_path):
    out = tmp_path / "out"
    convert_tree(tree, out, check_rc=0)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    p = convert_tree(tree, out, "--seed", "3", check_rc=2)
    assert "already exist" in p.stderr and "--overwrite" in p.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    p = convert_tree(tree, out, "--seed", "3", "--overwrite", check_rc=0)
    names = ", ".join(str(out / n) for n in ("train.beton", "train.dali", "train.meta.json"))
    assert f"convert_datasets: train: replacing {names}\n" in p.stderr  # one line says what it replaces
    assert read_meta(out / "train.beton").seed == 3
    assert {p for p in out.rglob("*") if p.is_file()} == set(before)  # the same files, replaced


def test_label_errors_and_warnings(tree, tmp_path):
    text = (tree / "train.txt").read_text()
    (tree / "bad.txt").write_text(text + "train/c00/000.jpg 7\n")
    p = convert_tree(tree, tmp_path / "o", "--num-classes", "3", split="bad.txt")
    assert p.returncode == 1 and "bad.txt line 11: label 7" in p.stderr and "out of range 0..2" in p.stderr
    assert not (tmp_path / "o").exists()

    rows = text.splitlines()
    rows[3] = rows[3].rsplit(None, 1)[0] + " 91"  # a typo far out of range, no --num-classes
    (tree / "typo.txt").write_text("\n".join(rows) + "\n")
    p = convert_tree(tree, tmp_path / "o", split="typo.txt", check_rc=1)
    assert "classes have no image" in p.stderr and "label 91 is at " in p.stderr
    assert f"{tree / 'typo.txt'} line 4 (a typo? otherwise pass --num-classes)" in p.stderr

    (tree / "gap.txt").write_text(text.replace(" 1\n", " 3\n"))  # class 1 loses its images
    p = convert_tree(tree, tmp_path / "o", split="gap.txt")
    assert p.returncode == 1 and "have no image (labels 1)" in p.stderr
    p = convert_tree(
        tree, tmp_path / "o", "--allow-empty-classes", split="gap.txt", check_rc=0, in_process=False
    )
    assert "warning:" in p.stderr and read_meta(tmp_path / "o" / "gap.beton").class_counts == (5, 0, 2, 3)

    (tree / "dup.txt").write_text(text + text.splitlines(keepends=True)[0])
    p = convert_tree(tree, tmp_path / "o", split="dup.txt", check_rc=0, in_process=False)
    assert "duplicate line(s) dropped" in p.stderr and "dup.txt line 11" in p.stderr
    assert read_meta(tmp_path / "o" / "dup.beton").num_samples == 10


@pytest.mark.parametrize(
    "args, match",
    [
        (["--formats", "ffcv,tfrecord"], "unknown ['tfrecord']; valid: ffcv, dali"),
        (["--jpeg-quality", "0"], "jpeg-quality must be in 1..100"),
        (["--shard-size", "0"], "shard-size must be >= 1"),
    ],
)
def test_bad_arguments_exit_2(tree, tmp_path, args, match):
    p = convert_tree(tree, tmp_path / "o", *args)
    assert p.returncode == 2 and match in p.stderr
    assert run_cli("imagenet", "--root", tree, "--out", tmp_path / "o").returncode == 2
    assert not (tmp_path / "o").exists()


def test_cifar_via_cli_is_exact_for_ffcv(tmp_path):
    written = write_cifar(tmp_path / "c", "cifar10", per_class_train=3, per_class_test=2)
    out = tmp_path / "out"
    run_cli(
        "cifar10_lt",
        "--root",
        tmp_path / "c",
        "--split",
        "train",
        "--imb-ratio",
        "10",
        "--out",
        out,
        check_rc=0,
    )
    run_cli("cifar10_lt", "--root", tmp_path / "c", "--split", "test", "--out", out, check_rc=0)
    meta = read_meta(out / "cifar10_lt_train.beton")
    assert meta.imb_ratio == 10 and list(meta.class_counts) == cifar_lt_counts(15, 10, 10)  # 15 .. 1 a class
    assert meta.class_names[:2] == ("class0", "class1")
    test = read_meta(out / "cifar10_lt_test.dali")
    assert test.class_counts == (2,) * 10

    from ffcv.reader import Reader

    r = Reader(str(out / "cifar10_lt_test.beton"))
    raw = np.fromfile(out / "cifar10_lt_test.beton", dtype=np.uint8)
    data, labels = written["test_batch"]
    pixels = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    src = {row.tobytes(): lab for row, lab in zip(pixels, labels, strict=True)}
    for (mode, w, h, ptr), label in r.metadata:
        assert (mode, w, h) == (1, 32, 32)  # raw: the exact pixels
        assert src[raw[ptr : ptr + 3072].tobytes()] == label


def test_failure_inside_writing_cleans_up(tree, tmp_path, monkeypatch):
    calls = []

    def boom(self, key, image, label, ext="jpg"):
        calls.append(key)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(wds_mod.ShardWriter, "add", boom)
    with pytest.raises(KeyboardInterrupt):
        convert(
            SplitRequest("imagenet_lt", tree, split_file=tree / "train.txt"),
            tmp_path / "o",
            ConvertOptions(workers=2, progress=False),
        )
    assert not (tmp_path / "o").exists()


def test_sigterm_leaves_nothing(tmp_path):
    root = write_slow_tree(tmp_path / "big")
    out = tmp_path / "out"
    out.mkdir()
    args = ["--root", root, "--split-file", root / "big.txt", "--out", out, "--workers", "1"]
    proc = subprocess.Popen(
        [*CLI, "imagenet_lt", *args, "--max-resolution", "64"], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 60
    while not any(out.iterdir()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.skip("conversion finished before it could be interrupted")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("conversion finished before the signal landed (a very loaded machine)")
    assert proc.returncode == 143, err
    assert os.listdir(out) == [], err


def test_image_too_wide_for_ffcv_fails_with_its_name(tree, tmp_path):
    Image.fromarray(np.zeros((1, 70_000, 3), np.uint8)).save(tree / "wide.png")
    (tree / "wide.txt").write_text((tree / "train.txt").read_text() + "wide.png 1\n")
    args = ["imagenet_lt", "--root", tree, "--split-file", tree / "wide.txt", "--max-resolution", "0"]
    p = run_cli(*args, "--out", tmp_path / "o")
    assert p.returncode == 1 and "wide.png" in p.stderr and "wide.txt line 11" in p.stderr
    assert "exceeds the 65535-pixel side" in p.stderr and not (tmp_path / "o").exists()
    run_cli(*args, "--out", tmp_path / "o", "--skip-bad", check_rc=0)
    assert read_meta(tmp_path / "o" / "wide.beton").skipped[0]["path"] == "wide.png"
    run_cli(*args, "--out", tmp_path / "o2", "--max-resolution", "1000", check_rc=0)  # 1000 x 1 fits
