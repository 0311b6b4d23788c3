"""Data fastlt did not convert, read as it is: a `.beton` from FFCV's own `DatasetWriter` (fields `img`,
`cls` and one the loader ignores) and a folder of WebDataset shards written with `tarfile` (jpg, jpeg and png
members, `.cls` labels, no DALI index files). Real FFCV and DALI on the CPU.

The data folder is made read-only and its listing (names, sizes, mtimes) compared before and after: the tests
run as root here, where chmod alone does not stop a write, so the listing is the proof nothing was written.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import launch
from pipelines import DataConfig, make_loader
from pipelines.foreign import class_counts, dataset_meta
from tests.foreign_data import read_split, write_ffcv_beton, write_wds_shards
from tests.helpers import tiny_argv

# numba prints a harmless KeyError from a finalizer of FFCV's compiled functions, never a failure of ours.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

KW = dict(resolution=32, batch_size=32, num_workers=1, eval_crop_ratio=1.0)
NAMES = {"ffcv": "ffcv-{split}.beton", "dali": "wds-{split}"}  # as other tools name them: no .dali suffix
FIELDS = dict(image_field="img", label_field="cls")


def listing(root: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def foreign(demo_images, tmp_path_factory):
    """{"dir": read-only data folder, "samples": {split: [(path, label)]}, "listing": its listing}."""
    data = tmp_path_factory.mktemp("foreign_data")
    samples = {split: read_split(demo_images, split) for split in ("train", "test")}
    for split, rows in samples.items():
        write_ffcv_beton(rows, data / NAMES["ffcv"].format(split=split))
        write_wds_shards(rows, data / NAMES["dali"].format(split=split), per_shard=100)
    paths = [data, *data.rglob("*")]
    for p in paths:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield {"dir": data, "samples": samples, "listing": listing(data)}
    for p in paths:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


def config(foreign, backend: str, cache: Path, split: str = "test", **kw) -> DataConfig:
    name = NAMES[backend].format(split=split)
    extra = FIELDS if backend == "ffcv" else {}
    return DataConfig(backend=backend, dir=str(foreign["dir"]), train=name, eval=name, cache_dir=str(cache),
                      **KW, **extra, **kw)  # fmt: skip


@pytest.mark.parametrize("backend", ["ffcv", "dali"])
def test_evaluation_yields_every_sample_once_with_its_label(foreign, tmp_path, backend):
    cfg = config(foreign, backend, tmp_path / "cache")
    rows = foreign["samples"]["test"]
    assert cfg.path("eval") == foreign["dir"] / NAMES[backend].format(split="test")  # used as it is named
    with make_loader(cfg, "eval") as loader:
        images, labels = zip(*((x.clone(), y) for x, y in loader), strict=True)
    images, labels = np.concatenate([x.numpy() for x in images]), np.concatenate(labels)
    assert labels.tolist() == [label for _, label in rows]  # evaluation: file order, each sample once
    for got, (path, _) in zip(images, rows, strict=True):  # its own sample's (JPEG re-encoding: close)
        want = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1).astype(np.int16)
        assert np.abs(got.astype(np.int16) - want).mean() < 8, path
    meta = loader.meta
    assert (
        meta.dataset == "foreign"
        and meta.split == "eval"
        and meta.stem == NAMES[backend].format(split="test").removesuffix(".beton")
    )
    assert meta.num_classes == 12 and meta.class_counts == tuple(np.bincount(labels, minlength=12))
    assert listing(foreign["dir"]) == foreign["listing"]  # nothing written beside the data


@pytest.mark.parametrize("backend", ["ffcv", "dali"])
def test_counts_and_indexes_are_made_once_then_read_from_the_cache(foreign, tmp_path, backend):
    cache = tmp_path / "cache"
    cfg = config(foreign, backend, cache, split="train")
    path = cfg.path("train")
    meta, index_dir = dataset_meta(cfg, path, "train")
    counts_file = Path(meta.formats["foreign"]["counts"])
    assert counts_file.parent == cache / "counts" and meta.num_samples == len(foreign["samples"]["train"])
    made = listing(cache)
    if backend == "dali":
        assert index_dir.parent == cache / "wds-index"
        assert sorted(p.name for p in index_dir.iterdir()) == [
            "part-0000.idx",
            "part-0001.idx",
            "part-0002.idx",
        ]
    else:
        assert index_dir is None and list(cache.iterdir()) == [cache / "counts"]

    # Proof that a second open takes the counts from the cache and reads no label: counts written into the
    # cache file by hand (valid, but not the data's) come back as they are.
    original = counts_file.read_bytes()
    record = json.loads(original)
    record["class_counts"] = [7] * 3
    counts_file.write_text(json.dumps(record))
    assert class_counts(cfg, path, cache, index_dir)[0].tolist() == [7, 7, 7]
    with pytest.raises(ValueError, match=f"delete {counts_file} to count again"):
        make_loader(cfg, "train")  # the loader's own labels disagree with such counts, and say where
    counts_file.write_bytes(original)
    os.utime(counts_file, ns=(made[str(counts_file.relative_to(cache))][1],) * 2)
    opened = listing(cache)  # and what the refused open's sample check cached
    assert {k: v for k, v in opened.items() if not k.startswith("checks")} == made

    with make_loader(cfg, "train") as loader:
        assert loader.meta == meta and len(loader) == meta.num_samples // 32
    assert listing(cache) == opened  # nothing counted, indexed, checked or written again


def test_changed_data_is_counted_again(foreign, tmp_path):
    """The cache is keyed by path, size and mtime: a shard rewritten in place gives a new key."""
    data = tmp_path / "data"
    rows = foreign["samples"]["test"]
    write_wds_shards(rows, data / "shards", per_shard=40)
    cfg = DataConfig(backend="dali", dir=str(data), eval="shards", cache_dir=str(tmp_path / "c"), **KW)
    first, index_dir = dataset_meta(cfg, cfg.path("eval"), "eval")
    write_wds_shards([(p, 0) for p, _ in rows[:40]], data / "shards", per_shard=40)  # shard 0: label 0
    second, index_dir2 = dataset_meta(cfg, cfg.path("eval"), "eval")
    assert index_dir2 != index_dir and second.formats["foreign"] != first.formats["foreign"]
    assert second.class_counts[0] == first.class_counts[0] + sum(1 for _, lab in rows[:40] if lab != 0)


@pytest.mark.parametrize("backend", ["ffcv", "dali"])
def test_one_epoch_through_launch(foreign, tmp_path, backend):
    names = {split: NAMES[backend].format(split=split) for split in ("train", "test")}
    extra = [f"--data.{k}={v}" for k, v in FIELDS.items()] if backend == "ffcv" else []
    argv = tiny_argv(
        foreign["dir"],
        tmp_path,
        f"foreign_{backend}",
        f"--data.train={names['train']}",
        f"--data.eval={names['test']}",
        f"--data.cache_dir={tmp_path / 'cache'}",
        *extra,
        backend=backend,
    )
    results = launch.main(argv)
    assert results["eval_samples"] == len(foreign["samples"]["test"])
    assert len(results["final"]["per_class"]) == 12
    assert listing(foreign["dir"]) == foreign["listing"]


def test_num_classes_for_a_split_without_the_last_classes(foreign, tmp_path):
    rows = [r for r in foreign["samples"]["test"] if r[1] < 10]
    write_wds_shards(rows, tmp_path / "data" / "shards", per_shard=1000)
    common = dict(backend="dali", dir=str(tmp_path / "data"), eval="shards", cache_dir=str(tmp_path / "c"))
    path = tmp_path / "data" / "shards"
    assert dataset_meta(DataConfig(**common, **KW), path, "eval")[0].num_classes == 10  # largest label + 1
    meta, _ = dataset_meta(DataConfig(**common, **KW, num_classes=12), path, "eval")
    assert meta.num_classes == 12 and meta.class_counts[10:] == (0, 0)
    with make_loader(DataConfig(**common, **KW, num_classes=12), "eval") as loader:
        assert sum(len(y) for _, y in loader) == len(rows)
    with pytest.raises(ValueError, match="holds labels up to 9, but data.num_classes = 8"):
        dataset_meta(DataConfig(**common, **KW, num_classes=8), path, "eval")


def test_num_classes_must_agree_with_a_meta_file(demo_converted):
    cfg = DataConfig(backend="ffcv", dir=str(demo_converted), num_classes=10, **KW)
    with pytest.raises(ValueError, match=r"data.num_classes = 10, but .*train.meta.json says 12"):
        make_loader(cfg, "train")
