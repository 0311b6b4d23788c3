"""make_loader's bad-input errors: each names the file, shard or argument at fault (no JIT compile needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines import DataConfig, MetaError, ShardError, make_loader, read_meta
from pipelines.ffcv_backend import BetonError
from pipelines.foreign import dataset_meta

KW = dict(batch_size=8, resolution=16, num_workers=1)


def open_loader(backend: str, path: Path, split: str = "train", **kw):
    """make_loader over the file or folder `path` (its name is the split's stem)."""
    stem = {"train": "train", "eval": "eval"}[split]
    cfg = DataConfig(backend=backend, dir=str(path.parent), **{stem: path.name}, **KW)
    return make_loader(cfg, split, **kw)


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
    with pytest.raises(ValueError, match="data.backend: unknown value 'tfrecord'; valid: 'ffcv', 'dali'"):
        DataConfig(backend="tfrecord")
    with pytest.raises(FileNotFoundError, match="nowhere.beton"):
        open_loader("ffcv", tmp_path / "nowhere.beton")
    with pytest.raises(FileNotFoundError, match="nowhere.dali"):
        make_loader(DataConfig(backend="dali", dir=str(tmp_path), train="nowhere", **KW), "train")


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
        open_loader(backend, demo_converted / name)
    assert name in str(err.value)


def test_folder_without_shards(tmp_path):
    folder = tmp_path / "empty.dali"
    folder.mkdir()
    (tmp_path / "empty.meta.json").write_text(
        '{"dataset": "folder", "split": "x", "stem": "empty", "num_classes": 1, "num_samples": 0, '
        '"class_counts": [0], "max_resolution": 512, "jpeg_quality": 90, "seed": 0}'
    )
    with pytest.raises(ShardError, match="empty.dali: no .tar shards"):
        open_loader("dali", folder)


def test_unreadable_or_missing_meta_file(copy_of, demo_converted):
    beton = copy_of("train.beton")
    meta = beton.parent / "train.meta.json"
    meta.write_text("{not json")
    with pytest.raises(MetaError, match="train.meta.json: cannot read meta"):
        open_loader("ffcv", beton)
    meta.unlink()  # without one, the data is foreign: counted from its labels (tests/test_foreign_data.py)
    cfg = DataConfig(backend="ffcv", dir=str(beton.parent), cache_dir=str(beton.parent / "cache"), **KW)
    counted = dataset_meta(cfg, beton, "train")[0]
    assert counted.dataset == "foreign"
    assert counted.class_counts == read_meta(demo_converted / "train.meta.json").class_counts


def test_shard_without_its_index(copy_of):
    folder = copy_of("train.dali")
    (folder / "shard-00000.idx").unlink()
    with pytest.raises(FileNotFoundError, match="shard-00000.tar: no index file shard-00000.idx.*wds2idx"):
        open_loader("dali", folder)


def test_truncated_shard(copy_of):
    folder = copy_of("train.dali")
    tar = folder / "shard-00000.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(ShardError, match="shard-00000.tar: truncated or corrupt shard"):
        open_loader("dali", folder)


def test_shard_overwritten_with_garbage(copy_of):
    folder = copy_of("train.dali")
    tar = folder / "shard-00000.tar"
    tar.write_bytes(bytes(1024) + tar.read_bytes()[1024:])  # the first member's header is gone
    with pytest.raises(ShardError, match="shard-00000.tar: no tar header"):
        open_loader("dali", folder, "eval")


def test_malformed_index(copy_of):
    folder = copy_of("train.dali")
    idx = folder / "shard-00000.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join([lines[0], lines[1], "jpg twelve 100 x.jpg cls 5 1 x.cls", *lines[3:]]) + "\n")
    with pytest.raises(ShardError, match="shard-00000.idx:3: offset/size of .jpg are not integers"):
        open_loader("dali", folder)
    idx.write_text("hello\n")
    with pytest.raises(ShardError, match="shard-00000.idx:1: not a DALI webdataset index"):
        open_loader("dali", folder)


def test_corrupt_beton(copy_of):
    beton = copy_of("train.beton")
    beton.write_bytes(b"not an ffcv file" * 4)
    with pytest.raises(BetonError, match="train.beton: not a readable FFCV .beton"):
        open_loader("ffcv", beton)


def test_corrupt_jpeg_names_the_samples(copy_of):
    folder = copy_of("train.dali")
    tar = folder / "shard-00000.tar"
    first = (folder / "shard-00000.idx").read_text().splitlines()[1].split()
    offset, size = int(first[1]), int(first[2])
    data = bytearray(tar.read_bytes())
    data[offset : offset + size] = bytes(size)  # valid tar and index, undecodable JPEG
    tar.write_bytes(bytes(data))
    with pytest.raises(RuntimeError) as err:
        open_loader("dali", folder, "eval")  # found when the loader opens, not in an epoch
    assert "shard-00000.tar: sample '00000000' (index 0) is corrupt" in str(err.value)


@pytest.mark.parametrize(
    "config,match",
    [
        (dict(sampler="weighted"), "data.sampler: unknown value 'weighted'; valid: 'uniform'"),
        (dict(batch_size=0), "data.batch_size: must be >= 1, got 0"),
        (dict(auto_augment="autoaugment"), "data.auto_augment: unknown value 'autoaugment'"),
        (dict(crop_scale=(0.5, 0.2)), r"data.crop_scale: must be \[low, high\]"),
        (dict(crop="center"), "data.crop: unknown value 'center'"),
        (dict(cutout=99, resolution=32), r"data.cutout: must be in 0..resolution \(32\), got 99"),
        (dict(eval_crop_ratio=float("nan")), "data.eval_crop_ratio: must be in"),
    ],
)
def test_bad_config_values_name_their_key(config, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**config)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(rank=2, world_size=2), "rank"),
        (dict(world_size=3), "batch_size=8 must be divisible by the number of processes \\(3\\)"),
        (dict(views=0), "views must be a positive integer"),
        (dict(device="cuda:7"), "cuda"),
    ],
)
def test_bad_arguments(demo_converted, kwargs, match):
    if "cuda" in str(kwargs.get("device")):
        import torch

        if torch.cuda.is_available():
            pytest.skip("needs a machine without CUDA")
    with pytest.raises(ValueError, match=match):
        open_loader("dali", demo_converted / "train.dali", **kwargs)
