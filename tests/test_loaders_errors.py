"""make_loader's bad-input errors: each names the file, shard or argument at fault (no JIT compile needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines import MetaError, ShardError, make_loader
from pipelines.ffcv_backend import BetonError

KW = dict(batch_size=8, resolution=16, device="cpu", num_workers=1)


@pytest.fixture
def copy_of(demo_converted, tmp_path):
    """Copy `<stem>.<ext>` (file or shard folder) and its meta file into a scratch folder we may damage."""

    def copy(name: str) -> Path:
        src = demo_converted / name
        stem = name.split(".")[0]
        shutil.copy(demo_converted / f"{stem}.meta.json", tmp_path / f"{stem}.meta.json")
        dst = tmp_path / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
        return dst

    return copy


def test_unknown_backend_and_missing_path(demo_converted, tmp_path):
    with pytest.raises(ValueError, match="unknown loader backend 'tfrecord'.*dali.*ffcv"):
        make_loader("tfrecord", demo_converted / "train.beton", train=True, **KW)
    with pytest.raises(FileNotFoundError, match="nowhere.beton"):
        make_loader("ffcv", tmp_path / "nowhere.beton", train=True, **KW)


@pytest.mark.parametrize(
    "backend,name,match",
    [
        ("ffcv", "train.dali", "reads a <stem>.beton file \\(a folder\\)"),
        ("ffcv", "train.meta.json", "reads a <stem>.beton file \\(not a .beton\\)"),
        ("dali", "train.beton", "reads a <stem>.dali folder of shards \\(a file\\)"),
    ],
)
def test_path_of_the_wrong_kind(demo_converted, backend, name, match):
    with pytest.raises(ValueError, match=match) as err:
        make_loader(backend, demo_converted / name, train=True, **KW)
    assert name in str(err.value)


def test_folder_without_shards(tmp_path):
    folder = tmp_path / "empty.dali"
    folder.mkdir()
    (tmp_path / "empty.meta.json").write_text(
        '{"dataset": "folder", "split": "x", "stem": "empty", "num_classes": 1, "num_samples": 0, '
        '"class_counts": [0], "max_resolution": 512, "jpeg_quality": 90, "seed": 0}'
    )
    with pytest.raises(ShardError, match="empty.dali: no .tar shards"):
        make_loader("dali", folder, train=True, **KW)


def test_missing_meta_file(copy_of):
    beton = copy_of("train.beton")
    (beton.parent / "train.meta.json").unlink()
    with pytest.raises(MetaError, match="train.meta.json"):
        make_loader("ffcv", beton, train=True, **KW)


def test_shard_without_its_index(copy_of):
    folder = copy_of("train.dali")
    (folder / "shard-00000.idx").unlink()
    with pytest.raises(FileNotFoundError, match="shard-00000.tar: no index file shard-00000.idx.*wds2idx"):
        make_loader("dali", folder, train=True, **KW)


def test_truncated_shard(copy_of):
    folder = copy_of("train.dali")
    tar = folder / "shard-00000.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(ShardError, match="shard-00000.tar: truncated or corrupt shard"):
        make_loader("dali", folder, train=True, **KW)


def test_shard_overwritten_with_garbage(copy_of):
    folder = copy_of("train.dali")
    tar = folder / "shard-00000.tar"
    tar.write_bytes(bytes(1024) + tar.read_bytes()[1024:])  # the first member's header is gone
    with pytest.raises(ShardError, match="shard-00000.tar: no tar header"):
        make_loader("dali", folder, train=False, **KW)


def test_malformed_index(copy_of):
    folder = copy_of("train.dali")
    idx = folder / "shard-00000.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join([lines[0], lines[1], "jpg twelve 100 x.jpg cls 5 1 x.cls", *lines[3:]]) + "\n")
    with pytest.raises(ShardError, match="shard-00000.idx:3: offset/size of .jpg are not integers"):
        make_loader("dali", folder, train=True, **KW)
    idx.write_text("hello\n")
    with pytest.raises(ShardError, match="shard-00000.idx:1: not a DALI webdataset index"):
        make_loader("dali", folder, train=True, **KW)


def test_corrupt_beton(copy_of):
    beton = copy_of("train.beton")
    beton.write_bytes(b"not an ffcv file" * 4)
    with pytest.raises(BetonError, match="train.beton: not a readable FFCV .beton"):
        make_loader("ffcv", beton, train=True, **KW)


def test_corrupt_jpeg_names_the_samples(copy_of):
    folder = copy_of("train.dali")
    tar = folder / "shard-00000.tar"
    first = (folder / "shard-00000.idx").read_text().splitlines()[1].split()
    offset, size = int(first[1]), int(first[2])
    data = bytearray(tar.read_bytes())
    data[offset : offset + size] = bytes(size)  # valid tar and index, undecodable JPEG
    tar.write_bytes(bytes(data))
    with make_loader("dali", folder, train=False, **KW) as loader, pytest.raises(RuntimeError) as err:
        list(loader)
    assert "shard-00000.tar:" in str(err.value)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sampler="weighted"), "unknown sampler 'weighted'"),
        (dict(rank=2, world_size=2), "rank"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(views=0), "views must be a positive integer"),
        (dict(auto_augment="autoaugment"), "augmentation policy 'autoaugment'"),
        (dict(scale=(0.5, 0.2)), "scale must be"),
        (dict(device="cuda:7"), "cuda"),
    ],
)
def test_bad_arguments(demo_converted, kwargs, match):
    args = {**KW, **kwargs}
    if "cuda" in str(args["device"]):
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("needs a machine without CUDA")
    with pytest.raises(ValueError, match=match):
        make_loader("dali", demo_converted / "train.dali", train=True, **args)
