"""Data as other tools write it, for the foreign-dataset tests: a `.beton` from FFCV's own `DatasetWriter`,
and WebDataset shards written with `tarfile` (no DALI index files), both from a `path label` split file."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def read_split(images: Path, split: str) -> list[tuple[Path, int]]:
    rows = (line.split() for line in (images / f"{split}.txt").read_text().splitlines() if line.strip())
    return [(images / path, int(label)) for path, label in rows]


class _Images:
    """An indexable data set as FFCV's writer takes it: (RGB uint8 array, int label) per sample."""

    def __init__(self, samples: list[tuple[Path, int]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[i]
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")), label


def write_ffcv_beton(
    samples, out: Path, *, image: str = "img", label: str = "cls", extra: bool = True
) -> None:
    """What ffcv-imagenet's write_imagenet does: `RGBImageField(write_mode="proportion")` (a random half of
    the images JPEG-compressed, the rest raw) and an `IntField`, through `DatasetWriter`; with `extra` a third
    field (a float) that the loader must leave alone."""
    from ffcv.fields import FloatField, IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    fields = {image: RGBImageField(write_mode="proportion", max_resolution=64, jpeg_quality=90)}
    fields[label] = IntField()
    data = _Images(samples)
    if extra:
        fields["weight"] = FloatField()
        data = _WithWeight(data)
    DatasetWriter(str(out), fields, num_workers=1).from_indexed_dataset(data, chunksize=50)


class _WithWeight(_Images):
    def __init__(self, inner: _Images):
        super().__init__(inner.samples)

    def __getitem__(self, i: int):
        return (*super().__getitem__(i), 0.5)


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A plain ustar archive of `(name, bytes)` members, in order (WebDataset keeps a sample's together)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def png_bytes(path: Path) -> bytes:
    buf = io.BytesIO()
    with Image.open(path) as im:
        im.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


TRAILER = b"\0" * 3 + b"SEFT camera metadata" + b"\0" * 500  # what some writers put after a JPEG's end


def write_wds_shards(
    samples, out: Path, *, per_shard: int = 100, png_every: int = 3, trailer_every: int = 5
) -> list[str]:
    """Shards `out/part-NNNN.tar` as webdataset's ShardWriter lays them out: per sample `<key>.jpg` (or
    `.jpeg`, or every `png_every`-th a `.png`; of the JPEGs, every `trailer_every`-th carries `TRAILER`
    after its end marker), `<key>.cls` (the label as text) and a `<key>.json` the loader ignores. Returns
    the keys, in order."""
    out.mkdir(parents=True, exist_ok=True)
    keys = []
    for s in range(0, len(samples), per_shard):
        members = []
        for i, (path, label) in enumerate(samples[s : s + per_shard], start=s):
            key = f"sample{i:06d}"
            if png_every and i % png_every == 0:
                members.append((f"{key}.png", png_bytes(path)))
            else:
                trailer = TRAILER if trailer_every and i % trailer_every == 1 else b""
                members.append((f"{key}.{'jpeg' if i % 2 else 'jpg'}", path.read_bytes() + trailer))
            members += [(f"{key}.cls", f"{label}\n".encode()), (f"{key}.json", b'{"source": "test"}')]
            keys.append(key)
        write_tar(out / f"part-{s // per_shard:04d}.tar", members)
    return keys
