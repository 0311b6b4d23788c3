"""CIFAR is stored losslessly in both formats: every image a conversion wrote, decoded back through the
loaders' own paths (DALI's `decoders.image` on the bytes `ShardSet.jpegs` hands out, with its corrupt-sample
check; FFCV's loader), equals the dataset's pixels exactly, and the meta says which encoding each holds."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import DataConfig, make_loader
from pipelines.convert import ConvertOptions, SplitRequest, convert, read_split, write_order
from pipelines.meta import read_meta
from pipelines.shards import open_shards
from tests.convert_util import write_cifar

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # numba finalizer


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A miniature CIFAR-100 (3 train / 1 test images a class), both splits converted to both formats, and
    the source pixels of every written sample in write order."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, "cifar100", per_class_train=3, per_class_test=1)
    out = root / "out"
    expected = {}
    for split in ("train", "test"):
        request = SplitRequest("cifar100_lt", root, split=split, imb_ratio=3 if split == "train" else None)
        convert(request, out, ConvertOptions(workers=1, shard_size=64, progress=False))
        samples = read_split(request)
        order = write_order(len(samples), 0)
        expected[split] = (samples.arrays[order], samples.labels[order])
    return out, expected


def test_meta_records_the_lossless_encodings(cifar):
    out, expected = cifar
    for split in ("train", "test"):
        meta = read_meta(out / f"cifar100_lt_{split}.meta.json")
        assert meta.formats["ffcv"]["encoding"] == "raw" and meta.formats["dali"]["encoding"] == "png"
        assert meta.num_samples == len(expected[split][1])
    shards = open_shards(out / "cifar100_lt_test.dali")
    first = (out / "cifar100_lt_test.dali" / "shard-00000.idx").read_text().splitlines()[1]
    assert first.startswith("png ") and ".png" in first  # the member extension tells the encoding
    assert len(shards.corrupt_samples()) == 0  # the loader's whole-image check accepts every PNG


def test_dali_decodes_every_stored_image_to_the_source_pixels(cifar):
    from nvidia.dali import fn, pipeline_def, types

    out, expected = cifar
    for split in ("train", "test"):
        shards = open_shards(out / f"cifar100_lt_{split}.dali")
        pixels, labels = expected[split]
        assert np.array_equal(shards.labels, labels)
        encoded = shards.jpegs(np.arange(len(shards)))  # the loader's slicing, each checked whole

        @pipeline_def(batch_size=len(encoded), num_threads=1, device_id=None)
        def pipe(data=encoded):
            images = fn.external_source(source=lambda: data, batch=True, dtype=types.UINT8, no_copy=True)
            return fn.decoders.image(images, device="cpu", output_type=types.RGB)

        p = pipe()
        p.build()
        (decoded,) = p.run()
        got = np.stack([np.array(decoded[i]) for i in range(len(encoded))])
        assert got.shape == pixels.shape and np.array_equal(got, pixels), split


@pytest.mark.parametrize(
    "backend, device",
    [("ffcv", "cpu"), ("dali", "cpu"), pytest.param("dali", "cuda", marks=pytest.mark.gpu)],
)
def test_eval_loader_returns_the_source_pixels(cifar, backend, device):
    """The whole evaluation path at 32 px and crop ratio 1 (the CIFAR recipes' setting): no resampling, so
    each backend's batches are the dataset's test images, exactly, in file order (on a GPU, DALI's `mixed`
    decoder takes the PNGs)."""
    out, expected = cifar
    cfg = DataConfig(
        backend=backend,
        dir=str(out),
        train="cifar100_lt_train",
        eval="cifar100_lt_test",
        resolution=32,
        eval_crop_ratio=1.0,
        batch_size=40,
        num_workers=1,
    )
    images, labels = [], []
    for x, y in make_loader(cfg, "eval", device=device):
        images.append(x.permute(0, 2, 3, 1).cpu().numpy())
        labels.append(y.cpu().numpy())
    pixels, want = expected["test"]
    assert np.array_equal(np.concatenate(labels), want)
    assert np.array_equal(np.concatenate(images), pixels)
