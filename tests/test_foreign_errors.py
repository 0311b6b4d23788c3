"""Foreign data that cannot be used says why, naming the file, field, shard or key; PNG members pass the
corrupt-sample check that guards DALI's decoders; the split -> path rule takes foreign names as they are."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import DataConfig, ShardError, make_loader
from pipelines.ffcv_backend import BetonError
from pipelines.foreign import cache_root, dataset_meta
from pipelines.shards import CorruptSampleError, image_problem, jpeg_problem, open_shards
from tests.foreign_data import png_bytes, read_split, write_ffcv_beton, write_tar, write_wds_shards

KW = dict(resolution=16, batch_size=8, num_workers=1)


@pytest.fixture(scope="module")
def rows(demo_images):
    return read_split(demo_images, "test")


@pytest.fixture(scope="module")
def beton(rows, tmp_path_factory):
    path = tmp_path_factory.mktemp("beton") / "ffcv.beton"
    write_ffcv_beton(rows[:20], path)  # fields img, cls, weight
    return path


def load(backend: str, path, cache, **kw):
    cfg = DataConfig(backend=backend, dir=str(path.parent), eval=path.name, cache_dir=str(cache), **KW, **kw)
    return make_loader(cfg, "eval")


def test_a_missing_field_is_named_with_the_fields_the_file_has(beton, tmp_path):
    fields = r"its fields: 'img' \(RGBImageField\), 'cls' \(IntField\), 'weight' \(FloatField\)"
    with pytest.raises(BetonError, match=rf"ffcv.beton: no field 'image' \(data.image_field\); {fields}"):
        load("ffcv", beton, tmp_path)
    with pytest.raises(BetonError, match=rf"no field 'label' \(data.label_field\); {fields}"):
        load("ffcv", beton, tmp_path, image_field="img")
    with pytest.raises(BetonError, match=r"field 'weight' \(data.label_field\) is not an IntField"):
        load("ffcv", beton, tmp_path, image_field="img", label_field="weight")
    with pytest.raises(BetonError, match=r"field 'cls' \(data.image_field\) is not an RGBImageField"):
        load("ffcv", beton, tmp_path, image_field="cls", label_field="img")
    with load("ffcv", beton, tmp_path, image_field="img", label_field="cls") as loader:
        assert loader.meta.num_samples == 20  # the extra field is left alone


def test_fields_must_differ():
    with pytest.raises(ValueError, match="data.label_field: must be a name other than image_field"):
        DataConfig(image_field="x", label_field="x")


def sample(key: str, jpeg: bytes, label: bytes | None = b"3", image: str = "jpg") -> list[tuple[str, bytes]]:
    members = [(f"{key}.{image}", jpeg)] if image else []
    return members + ([(f"{key}.cls", label)] if label is not None else [])


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(label=None), r"part-0.tar: sample 'b' has no .cls label member; its members: \['b.jpg'\]"),
        (dict(image=""), r"part-0.tar: sample 'b' has no image member \(.jpg, .jpeg, .png\); .*\['b.cls'\]"),
        (dict(label=b"cat"), r"part-0.tar: sample 'b' has a non-integer label b'cat'"),
        (dict(label=b"-1"), r"part-0.tar: sample 'b' has label -1: labels must be class indices"),
    ],
)
def test_a_bad_sample_names_its_shard_and_key(rows, tmp_path, bad, match):
    jpeg = rows[0][0].read_bytes()
    (tmp_path / "data").mkdir()
    write_tar(
        tmp_path / "data" / "part-0.tar", sample("a", jpeg) + sample("b", jpeg, **bad) + sample("c", jpeg)
    )
    with pytest.raises(
        ShardError if "non-integer" in match or "has no" in match else ValueError, match=match
    ):
        load("dali", tmp_path / "data", tmp_path / "cache")


def test_a_truncated_shard_without_an_index_is_refused(rows, tmp_path):
    write_wds_shards(rows[:30], tmp_path / "data", per_shard=30)
    tar = tmp_path / "data" / "part-0000.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(ShardError, match="part-0000.tar: truncated or corrupt shard"):
        load("dali", tmp_path / "data", tmp_path / "cache")


def test_a_cache_that_cannot_be_written_names_the_key(rows, tmp_path):
    write_wds_shards(rows[:4], tmp_path / "data")
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ValueError, match="have no index files.*set data.cache_dir to a writable folder"):
        load("dali", tmp_path / "data", tmp_path / "file" / "cache")


def test_png_members_pass_the_corrupt_sample_check(rows, tmp_path):
    png = png_bytes(rows[0][0])
    assert image_problem(png) is None and image_problem(rows[0][0].read_bytes()) is None
    assert jpeg_problem(png) is not None  # the converter still re-encodes a PNG rather than pass it on
    assert "no PNG end chunk" in image_problem(png[: len(png) // 2] + bytes(len(png) - len(png) // 2))
    assert "no JPEG or PNG start marker (it begins 00 00" in image_problem(bytes(len(png)))
    assert "no PNG end chunk" in image_problem(png[:10])

    write_wds_shards(rows[:12], tmp_path / "data", png_every=2)  # 6 PNGs, 6 JPEGs, no index
    meta, index_dir = dataset_meta(
        DataConfig(backend="dali", cache_dir=str(tmp_path / "c")), tmp_path / "data", "x"
    )
    shards = open_shards(tmp_path / "data", meta, index_dir=index_dir)
    assert len(shards.corrupt_samples()) == 0 and len(shards.jpegs(np.arange(12))) == 12
    shards.close()

    tar = tmp_path / "data" / "part-0000.tar"  # the PNG of sample 2 cut short in place: the tar stays valid
    data = bytearray(tar.read_bytes())
    start = data.index(png_bytes(rows[2][0]))
    data[start + 100 : start + len(png_bytes(rows[2][0]))] = bytes(len(png_bytes(rows[2][0])) - 100)
    tar.write_bytes(bytes(data))
    shards = open_shards(tmp_path / "data", meta, index_dir=index_dir)
    assert shards.corrupt_samples().tolist() == [2]
    with pytest.raises(
        CorruptSampleError, match=r"part-0000.tar: sample 'sample000002' \(index 2\) .*PNG end"
    ):
        shards.jpegs(np.arange(12))
    shards.close()


def test_a_foreign_name_is_taken_as_it_is(rows, beton, tmp_path):
    write_wds_shards(rows[:4], tmp_path / "shards")
    (tmp_path / "empty").mkdir()
    (tmp_path / "plain").symlink_to(beton)  # a .beton named without its suffix

    def path(backend, name):
        return DataConfig(backend=backend, dir=str(tmp_path), train=name).path("train")

    assert path("dali", "shards") == tmp_path / "shards"  # a folder holding *.tar
    assert path("dali", "empty") == tmp_path / "empty.dali"  # no shards: the suffix rule as before
    assert path("dali", "train") == tmp_path / "train.dali"
    assert path("ffcv", "plain") == tmp_path / "plain"  # an existing file
    assert path("ffcv", "shards") == tmp_path / "shards.beton"  # a folder is no .beton
    with load("ffcv", tmp_path / "plain", tmp_path / "c", image_field="img", label_field="cls") as loader:
        assert loader.meta.stem == "plain" and loader.meta.num_samples == 20


def test_the_default_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root("") == tmp_path / "xdg" / "fastlt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root("") == tmp_path / "home" / ".cache" / "fastlt"
    assert cache_root("~/elsewhere") == tmp_path / "home" / "elsewhere"
    assert DataConfig().cache_dir == ""
