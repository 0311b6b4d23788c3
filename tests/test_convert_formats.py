"""Both output formats, read back by FFCV's and DALI's own readers, sample by sample and label by label."""

from __future__ import annotations

import io
import random

import cv2
import numpy as np
import pytest
from PIL import Image

from pipelines.convert import ConvertOptions, SplitRequest, convert, read_split, write_order
from pipelines.convert import beton as beton_mod
from pipelines.meta import read_meta
from pipelines.shards import shard_paths

MAX_RES = 128
SIZES = [(40, 30), (120, 90), (300, 200), (90, 200)]  # raw, JPEG, resized to 128x85, resized to 57x128


def _image(label: int, i: int, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack(
        [(xx * 255 // w + label * 40) % 256, yy * 255 // h + 0 * xx, 0 * xx + (i * 23) % 256], -1
    ).astype(np.uint8)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A shuffled list of 3 classes whose images are raw-sized, JPEG-sized and too large; converted with
    small shards and two worker processes."""
    root = tmp_path_factory.mktemp("mixed")
    rows = []
    for label, n in enumerate([6, 4, 3]):
        for i in range(n):
            rel = f"train/{label}/{i}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_image(label, i, SIZES[(label + i) % 4])).save(root / rel, quality=95)
            rows.append((rel, label))
    random.Random(0).shuffle(rows)
    (root / "mixed.txt").write_text("".join(f"{r} {lab}\n" for r, lab in rows))
    out = root / "out"
    opts = ConvertOptions(max_resolution=MAX_RES, workers=2, shard_size=4, seed=7, progress=False)
    summary = convert(SplitRequest("imagenet_lt", root, split_file=root / "mixed.txt"), out, opts)
    order = write_order(len(rows), 7)
    expected = []
    for j in order:
        rel, label = rows[j]
        src = np.asarray(Image.open(root / rel).convert("RGB"))
        h, w = src.shape[:2]
        scale = min(1.0, MAX_RES / max(w, h))
        tw, th = max(1, int(scale * w)), max(1, int(scale * h))
        expected.append((cv2.resize(src, (tw, th), interpolation=cv2.INTER_AREA), label))
    return {"root": root, "out": out, "rows": rows, "expected": expected, "summary": summary}


def close(a, b, tol=4.0):
    return a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < tol


def test_beton_layout_constants_match_installed_ffcv():
    from ffcv import types
    from ffcv.fields import IntField, RGBImageField

    assert types.HeaderType == beton_mod.HEADER_TYPE
    assert types.FieldDescType == beton_mod.FIELD_DESC_TYPE
    assert beton_mod.ALLOC_TABLE_TYPE == types.ALLOC_TABLE_TYPE
    assert beton_mod.FORMAT_VERSION == types.CURRENT_VERSION
    assert types.get_metadata_type([RGBImageField(), IntField()]) == beton_mod.METADATA_TYPE
    assert dict((n, types.TYPE_ID_HANDLER[t]) for n, t in beton_mod.FIELDS) == {
        "image": RGBImageField,
        "label": IntField,
    }


def test_meta_describes_what_was_written(mixed):
    meta = read_meta(mixed["out"] / "mixed.beton")
    assert (meta.dataset, meta.split, meta.stem, meta.num_classes, meta.num_samples) == (
        "imagenet_lt",
        "mixed",
        "mixed",
        3,
        13,
    )
    assert meta.class_counts == (6, 4, 3) and meta.seed == 7 and meta.max_resolution == MAX_RES
    assert meta.formats["ffcv"]["file"] == "mixed.beton"
    assert meta.formats["dali"]["shards"] == [f"shard-0000{i}.tar" for i in range(4)]
    assert meta.formats["dali"]["samples_per_shard"] == [4, 4, 4, 1]
    tars = shard_paths(mixed["out"] / "mixed.dali", meta)
    assert all(p.is_file() and p.with_suffix(".idx").is_file() for p in tars)
    assert read_meta(mixed["out"] / "mixed.dali") == meta == read_meta(mixed["out"] / "mixed.meta.json")
    assert sorted(p.name for p in mixed["out"].iterdir()) == ["mixed.beton", "mixed.dali", "mixed.meta.json"]


def test_beton_read_back_with_ffcv_reader(mixed):
    """FFCV's own Reader (header, field handlers, metadata, allocation table); payloads decoded by hand."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.reader import Reader

    r = Reader(str(mixed["out"] / "mixed.beton"))
    assert r.num_samples == 13 and r.field_names == ["image", "label"]
    assert isinstance(r.handlers["image"], RGBImageField) and isinstance(r.handlers["label"], IntField)
    raw = np.fromfile(mixed["out"] / "mixed.beton", dtype=np.uint8)
    size_at = dict(zip(r.alloc_table["ptr"].tolist(), r.alloc_table["size"].tolist(), strict=True))
    modes = set()
    for k, (img_meta, label) in enumerate(r.metadata):
        want, want_label = mixed["expected"][k]
        assert label == want_label
        mode, w, h, ptr = (int(v) for v in img_meta)
        assert (h, w) == want.shape[:2] and max(w, h) <= MAX_RES
        data = raw[ptr : ptr + size_at[ptr]]
        assert ptr // r.page_size == (ptr + len(data) - 1) // r.page_size  # never across pages
        got = (
            data.reshape(h, w, 3)
            if mode == 1
            else np.asarray(Image.open(io.BytesIO(data.tobytes())).convert("RGB"))
        )
        assert close(got, want), k
        modes.add(mode)
    assert modes == {0, 1}  # both JPEG and raw samples were exercised


@pytest.mark.slow  # FFCV's loader JIT-compiles its pipeline (10-20 s)
def test_beton_round_trip_through_ffcv_loader(mixed):
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
    from ffcv.loader import Loader, OrderOption

    loader = Loader(
        str(mixed["out"] / "mixed.beton"),
        batch_size=5,
        num_workers=1,
        order=OrderOption.SEQUENTIAL,
        drop_last=False,
        pipelines={"image": [CenterCropRGBImageDecoder((24, 24), ratio=1.0)], "label": [IntDecoder()]},
    )
    images, labels = [], []
    for x, y in loader:
        images.extend(np.array(x))
        labels.extend(np.array(y).reshape(-1).tolist())
    assert labels == [lab for _, lab in mixed["expected"]]  # every label, in write order
    for got, (want, _) in zip(images, mixed["expected"], strict=True):
        h, w = want.shape[:2]
        s = min(h, w)
        crop = want[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        assert close(got, cv2.resize(crop, (24, 24), interpolation=cv2.INTER_AREA), tol=8)


def test_dali_index_files_match_wds2idx(mixed, tmp_path):
    from wds2idx import IndexCreator

    for tar in shard_paths(mixed["out"] / "mixed.dali", read_meta(mixed["out"] / "mixed.dali")):
        idx = tar.with_suffix(".idx")
        with IndexCreator(str(tar), str(tmp_path / "ref.idx"), verbose=False) as ic:
            ic.create_index()
        assert idx.read_text() == (tmp_path / "ref.idx").read_text()


def test_dali_round_trip_through_webdataset_reader(mixed):
    from nvidia.dali import fn, pipeline_def, types

    meta = read_meta(mixed["out"] / "mixed.dali")
    tars = shard_paths(mixed["out"] / "mixed.dali", meta)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        jpg, cls = fn.readers.webdataset(
            paths=[str(p) for p in tars],
            index_paths=[str(p.with_suffix(".idx")) for p in tars],
            ext=["jpg", "cls"],
            missing_component_behavior="error",
            name="reader",
        )
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), cls

    p = pipe()
    p.build()
    assert p.epoch_size("reader") == meta.num_samples
    for k, (want, want_label) in enumerate(mixed["expected"]):
        img, cls = p.run()
        assert int(np.array(cls[0]).tobytes().decode("ascii")) == want_label, k
        assert close(np.array(img[0]), want), k


def test_output_is_reproducible_and_seeded(mixed, tmp_path):
    """Same seed: byte-identical files whatever the number of workers; another seed: another order."""
    req = SplitRequest("imagenet_lt", mixed["root"], split_file=mixed["root"] / "mixed.txt")
    convert(
        req,
        tmp_path / "a",
        ConvertOptions(max_resolution=MAX_RES, workers=1, shard_size=4, seed=7, progress=False),
    )
    for name in ["mixed.beton", "mixed.dali/shard-00001.tar", "mixed.dali/shard-00003.idx"]:
        assert (tmp_path / "a" / name).read_bytes() == (mixed["out"] / name).read_bytes()
    convert(req, tmp_path / "b", ConvertOptions(max_resolution=MAX_RES, workers=1, seed=8, progress=False))
    from ffcv.reader import Reader

    labels_7 = Reader(str(mixed["out"] / "mixed.beton")).metadata["f1"].tolist()
    labels_8 = Reader(str(tmp_path / "b" / "mixed.beton")).metadata["f1"].tolist()
    assert sorted(labels_7) == sorted(labels_8) and labels_7 != labels_8
    order = write_order(13, 7)
    assert sorted(order.tolist()) == list(range(13)) and order.tolist() != list(range(13))
    s = read_split(req)
    assert labels_7 == s.labels[order].tolist()
