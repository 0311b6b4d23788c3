"""Damaged or oversized data is found when its loader opens (either backend, either split), never mid-epoch
or trained on; bad labels of foreign data fail before any per-class array is made; the converter refuses a
zero-filled or truncated JPEG source."""

from __future__ import annotations

import io
import json
import os
import shutil
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipelines import DataConfig, DataError, make_loader
from pipelines.convert.beton import BetonWriter
from pipelines.convert.images import FFCV_JPG, EncodeOptions, encode_bytes
from pipelines.convert.pool import _encode_task, _init_worker
from pipelines.foreign import dataset_meta
from pipelines.meta import read_meta
from pipelines.sample_check import image_size
from pipelines.shards import CorruptSampleError
from tests.foreign_data import write_tar
from tests.test_shards import damage
from trainer.history import left_out

KW = dict(batch_size=4, resolution=16, num_workers=1)


def jpeg(w: int, h: int, seed: int = 0) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", rgb)[1].tobytes()


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def write_beton(path: Path, images: list[bytes], labels: list[int]) -> list[tuple[int, int]]:
    """A `.beton` of JPEG samples (what the converter writes for images above CIFAR's size); returns each
    sample's (offset, size) in the file."""
    with BetonWriter(path, len(images)) as w:
        for data, label in zip(images, labels, strict=True):
            h, wd = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2]
            w.add(FFCV_JPG, wd, h, data, label)
        return [(int(p), int(s)) for _, p, s in w.allocs[: w.num_samples]]


def test_image_size_reads_the_header_without_decoding():
    assert image_size(jpeg(70, 30)) == (70, 30)
    assert image_size(png(20000, 3)) == (20000, 3)
    exif = b"\xff\xe1" + (5000).to_bytes(2, "big") + bytes(4998)  # a large APP1 block before the frame
    data = jpeg(9, 11)
    assert image_size(data[:2] + exif + data[2:]) == (9, 11)
    assert image_size(bytes(100)) is None


@pytest.mark.parametrize("split", ["train", "eval"])
def test_a_damaged_dali_sample_stops_the_loader_at_open_or_is_left_out(demo_converted, tmp_path, split):
    """Before: a corrupt evaluation sample was found only after a whole training epoch, and skip_corrupt
    covered training only."""
    stem = {"train": "train", "eval": "test"}[split]
    shutil.copy(demo_converted / f"{stem}.meta.json", tmp_path)
    shutil.copytree(demo_converted / f"{stem}.dali", tmp_path / f"{stem}.dali")
    key = damage(tmp_path / f"{stem}.dali", 2, "truncated")
    cfg = DataConfig(backend="dali", dir=str(tmp_path), **KW)
    with pytest.raises(CorruptSampleError, match=f"'{key}' \\(index 2\\) is corrupt.*leave such samples out"):
        make_loader(cfg, split)  # opening, not an epoch
    full = read_meta(tmp_path / f"{stem}.dali")
    with make_loader(DataConfig(**{**cfg.__dict__, "skip_corrupt": True}), split) as loader:
        assert loader.meta.num_samples == full.num_samples - 1 and left_out(loader.meta) == 1
        labels = np.concatenate([y.numpy() for _, y in loader])
    if split == "eval":
        assert len(labels) == full.num_samples - 1  # every kept sample evaluated once


def test_a_zero_filled_jpeg_in_a_beton_is_refused_at_open(tmp_path):
    """Before: FFCV decoded it as an all-black image and trained on it under its label."""
    images = [jpeg(80, 72, seed=i) for i in range(6)]
    beton = tmp_path / "train.beton"
    where = write_beton(beton, images, [0, 1, 0, 1, 0, 1])
    cfg = DataConfig(backend="ffcv", dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), **KW)
    make_loader(cfg, "train").close()  # whole: opens
    data = bytearray(beton.read_bytes())
    offset, size = where[3]
    data[offset : offset + size] = bytes(size)
    stat = beton.stat()
    beton.write_bytes(bytes(data))
    os.utime(beton, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    make_loader(cfg, "train").close()  # same size and mtime: the verdict cached by the first open holds
    beton.touch()
    with pytest.raises(DataError, match=r"train.beton: sample 3 \(field 'image'\) is corrupt: no JPEG start"):
        make_loader(cfg, "train")
    data[offset : offset + size] = images[3][: size // 2] + bytes(size - size // 2)  # cut short
    beton.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"sample 3 \(field 'image'\) is corrupt: no JPEG end marker"):
        make_loader(cfg, "train")


def test_foreign_images_over_max_pixels_are_refused_naming_shard_and_key(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    members = []
    for i, (data, ext) in enumerate([(jpeg(40, 30), "jpg"), (png(50, 60), "png"), (jpeg(300, 200), "jpg")]):
        members += [(f"k{i}.{ext}", data), (f"k{i}.cls", b"%d" % (i % 2))]
    write_tar(folder / "part-0000.tar", members)
    cfg = DataConfig(backend="dali", dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), **KW)
    make_loader(cfg, "train").close()
    kinds = {json.loads(f.read_text())["kind"] for f in (tmp_path / "cache" / "checks").glob("*.json")}
    assert kinds == {"corrupt-shards", "sizes"}  # what the checks found, remembered
    for _ in range(2):  # from the cache, then counted again without it
        with pytest.raises(
            DataError, match=r"part-0000.tar: sample 'k2' \(index 2\) is a 300x200 image, over"
        ):
            make_loader(DataConfig(**{**cfg.__dict__, "max_pixels": 50000}), "train")
        shutil.rmtree(tmp_path / "cache" / "checks")
    beton = tmp_path / "big.beton"
    write_beton(beton, [jpeg(40, 30), jpeg(300, 200)], [0, 1])
    bcfg = DataConfig(backend="ffcv", dir=str(tmp_path), train="big.beton", max_pixels=50000, **KW)
    with pytest.raises(DataError, match=r"big.beton: sample 1 is a 300x200 image, over data.max_pixels"):
        make_loader(DataConfig(**{**bcfg.__dict__, "cache_dir": str(tmp_path / "cache")}), "train")


def _label_shards(folder: Path, labels: list[int]) -> None:
    folder.mkdir()
    members = []
    for i, label in enumerate(labels):
        members += [(f"k{i}.jpg", jpeg(8, 8, seed=i)), (f"k{i}.cls", str(label).encode())]
    write_tar(folder / "part-0000.tar", members)


def test_a_typo_label_fails_before_a_per_class_array_is_made(tmp_path):
    _label_shards(tmp_path / "train", [0, 1, 3000000000, 1])
    cfg = DataConfig(backend="dali", dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), **KW)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"train: sample 2 has label 3000000000, more than"):
            dataset_meta(cfg, tmp_path / "train", "train")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 26  # not 22 GiB of bincount
    with pytest.raises(DataError, match=r"sample 2 has label 3000000000, but data.num_classes = 4"):
        dataset_meta(DataConfig(**{**cfg.__dict__, "num_classes": 4}), tmp_path / "train", "train")


def test_an_empty_training_class_of_foreign_data_names_the_class_and_the_file(tmp_path):
    _label_shards(tmp_path / "train", [0, 1, 3, 3, 1])
    cfg = DataConfig(backend="dali", dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), **KW)
    with pytest.raises(DataError, match=r"train: class 2 has no training sample \(1 of 4 classes"):
        make_loader(cfg, "train")
    with pytest.raises(
        DataError, match=r"class 2 has no training sample \(3 of 6 classes .*data.num_classes = 6"
    ):
        make_loader(DataConfig(**{**cfg.__dict__, "num_classes": 6}), "train")
    meta, _ = dataset_meta(DataConfig(**{**cfg.__dict__, "num_classes": 6}), tmp_path / "train", "eval")
    assert meta.class_counts == (1, 2, 0, 2, 0, 0)  # an evaluation split may lack classes


@pytest.mark.parametrize("how", ["zero_filled_tail", "cut", "zero_filled"])
def test_the_converter_refuses_a_zero_filled_or_truncated_jpeg(tmp_path, how):
    whole = jpeg(120, 90)
    data = {
        "zero_filled_tail": whole[: len(whole) // 2] + bytes(len(whole) - len(whole) // 2),
        "cut": whole[: len(whole) * 2 // 3],
        "zero_filled": bytes(len(whole)),
    }[how]
    opts = EncodeOptions(max_resolution=0)
    encode_bytes(whole, opts)
    path = tmp_path / "img.jpg"
    path.write_bytes(data)
    _init_worker(opts, in_process=True)
    ok, why = _encode_task(("file", str(path)))
    assert not ok and ("zero-filled" in why or "truncated" in why), why


def test_results_say_how_many_samples_skip_corrupt_left_out(demo_converted):
    """Evaluating on fewer samples is stated in results.json, not only in the log."""
    from dataclasses import replace

    from trainer.config import Config
    from trainer.history import History, results

    meta = read_meta(demo_converted / "test.dali")
    dropped = replace(
        meta,
        num_samples=meta.num_samples - 1,
        class_counts=(meta.class_counts[0] - 1, *meta.class_counts[1:]),
        skipped=({"path": "s.tar:k", "line": 1, "error": "x", "by": "data.skip_corrupt"},),
    )
    got = results(Config(), meta.class_counts, History(), {"train": meta, "eval": dropped})
    assert got["left_out"] == {"train": 0, "eval": 1}
    json.dumps(got)
