"""Random access to the WebDataset shards of a `.dali` folder through their DALI index files.

Each `shard-NNNNN.tar` has a `shard-NNNNN.idx` beside it (DALI's `wds2idx` format: a `v1.x <samples>` line,
then one line per sample of `<ext> <data offset> <size> [<member name>]` per component). The index gives
every sample's JPEG bytes as a slice of the memory-mapped tar, so the DALI loader can feed any order it
draws (samplers, rank slices) through `fn.external_source` without reading the archives sequentially.
Opening validates everything it can cheaply: a missing index, an index that does not parse, offsets past
the end of the tar, tar headers that are not where the index says, sample counts that disagree with the
meta file, labels that are not integers in range. Every error names the shard (and the sample) at fault.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError
from .meta import DatasetMeta

IMAGE_EXTS = ("jpg", "jpeg")
LABEL_EXT = "cls"
TAR_BLOCK = 512


class ShardError(DataError):
    """A shard or its index is missing, malformed or inconsistent; the message names the file."""


@dataclass
class _Index:
    image_offset: np.ndarray
    image_size: np.ndarray
    label_offset: np.ndarray
    label_size: np.ndarray
    names: list[str]


def _parse_index(idx: Path, tar: Path) -> _Index:
    try:
        lines = idx.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ShardError(f"{idx}: cannot read the index of {tar.name}: {exc}") from None
    head = lines[0].split() if lines else []
    if len(head) != 2 or not head[0].startswith("v1.") or not head[1].isdigit():
        raise ShardError(f"{idx}:1: not a DALI webdataset index (expected 'v1.x <samples>', got {lines[:1]})")
    version, count = head[0], int(head[1])
    width = 4 if version >= "v1.2" else 3
    rows = [line.split() for line in lines[1:] if line.strip()]
    if len(rows) != count:
        raise ShardError(f"{idx}: the header announces {count} samples but {len(rows)} lines follow")
    img_off, img_size, lab_off, lab_size, names = [], [], [], [], []
    for n, row in enumerate(rows, start=2):
        if len(row) % width:
            raise ShardError(f"{idx}:{n}: expected groups of {width} fields, got {len(row)} fields")
        comps = {}
        for k in range(0, len(row), width):
            ext, off, size = row[k], row[k + 1], row[k + 2]
            if not (off.isdigit() and size.isdigit()):
                raise ShardError(f"{idx}:{n}: offset/size of .{ext} are not integers: {off!r} {size!r}")
            comps[ext] = (int(off), int(size), row[k + 3] if width == 4 else "")
        image = next((comps[e] for e in IMAGE_EXTS if e in comps), None)
        if image is None or LABEL_EXT not in comps:
            raise ShardError(
                f"{idx}:{n}: a sample needs a .jpg and a .{LABEL_EXT} component, found {sorted(comps)}"
            )
        img_off.append(image[0])
        img_size.append(image[1])
        lab_off.append(comps[LABEL_EXT][0])
        lab_size.append(comps[LABEL_EXT][1])
        names.append(image[2] or f"sample {n - 2}")
    as64 = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    return _Index(as64(img_off), as64(img_size), as64(lab_off), as64(lab_size), names)


def _check_header(buf: np.ndarray, tar: Path, offset: int, name: str) -> None:
    """The ustar header of a member sits in the 512 bytes before its data offset (v1.2 indexes name it)."""
    start = offset - TAR_BLOCK
    header = bytes(buf[start : start + TAR_BLOCK]) if start >= 0 else b""
    if header[257:262] != b"ustar":
        raise ShardError(
            f"{tar}: no tar header before offset {offset} ({name}): corrupt shard or stale index"
        )
    stored = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    if not name.startswith("sample ") and stored != name:
        raise ShardError(f"{tar}: the member at offset {offset} is {stored!r}, the index says {name!r}")


@dataclass
class ShardSet:
    """Every sample of a `.dali` folder: its shard, its JPEG slice and its label, in shard order."""

    directory: Path
    shards: list[Path]
    shard_of: np.ndarray  # int32, per sample
    offsets: np.ndarray  # int64, JPEG data offset inside its shard
    sizes: np.ndarray  # int64, JPEG size
    labels: np.ndarray  # int64
    keys: list[str]
    _maps: list[mmap.mmap] = field(default_factory=list, repr=False)
    _views: list[np.ndarray] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def jpegs(self, indices: np.ndarray) -> list[np.ndarray]:
        """The encoded bytes of `indices` as uint8 views into the mapped shards (no copy)."""
        views, shard_of, offsets, sizes = self._views, self.shard_of, self.offsets, self.sizes
        return [views[shard_of[i]][offsets[i] : offsets[i] + sizes[i]] for i in indices.tolist()]

    def describe(self, i: int) -> str:
        return f"{self.shards[self.shard_of[i]]}:{self.keys[i]}"

    def undecodable(self, indices: np.ndarray) -> list[int]:
        """The samples among `indices` that PIL cannot decode (slow: for error messages only)."""
        import io

        from PIL import Image

        bad = []
        for i, data in zip(indices.tolist(), self.jpegs(indices), strict=True):
            try:
                with Image.open(io.BytesIO(data.tobytes())) as im:
                    im.load()
            except Exception:
                bad.append(int(i))
        return bad

    def close(self) -> None:
        self._views.clear()
        for m in self._maps:
            with contextlib.suppress(BufferError):  # a view handed out is alive: closed when collected
                m.close()
        self._maps.clear()


def shard_paths(directory: Path, meta: DatasetMeta | None) -> list[Path]:
    """The shards named by the meta file (in its order), else every `*.tar` of the folder, sorted."""
    if meta is not None and "dali" in meta.formats and meta.formats["dali"].get("shards"):
        return [directory / name for name in meta.formats["dali"]["shards"]]
    return sorted(directory.glob("*.tar"))


def open_shards(directory: str | os.PathLike, meta: DatasetMeta | None = None) -> ShardSet:
    directory = Path(directory)
    if not directory.is_dir():
        raise ShardError(f"{directory}: not a folder of WebDataset shards (expected <stem>.dali/)")
    tars = shard_paths(directory, meta)
    if not tars:
        raise ShardError(f"{directory}: no .tar shards in this folder")
    expected = None
    if meta is not None and "dali" in meta.formats:
        expected = meta.formats["dali"].get("samples_per_shard")
    shard_of, offsets, sizes, labels, keys = [], [], [], [], []
    maps, views = [], []
    try:
        for s, tar in enumerate(tars):
            idx = tar.with_suffix(".idx")
            if not tar.is_file():
                raise FileNotFoundError(f"{tar}: shard listed in the meta file is missing")
            if not idx.is_file():
                raise FileNotFoundError(
                    f"{tar}: no index file {idx.name} beside it; make one with DALI's "
                    f"`wds2idx {tar} {idx}` or re-run tools/convert_datasets.py"
                )
            index = _parse_index(idx, tar)
            n = len(index.names)
            if expected is not None and s < len(expected) and expected[s] != n:
                raise ShardError(f"{idx}: indexes {n} samples, the meta file says {expected[s]}")
            tar_size = tar.stat().st_size
            ends = np.concatenate(
                [index.image_offset + index.image_size, index.label_offset + index.label_size]
            )
            if n and ends.max() > tar_size:
                bad = int(np.argmax(index.image_offset + index.image_size > tar_size))
                raise ShardError(
                    f"{tar}: truncated or corrupt shard: the index points past its end ({tar_size} bytes), "
                    f"first at sample {index.names[bad]!r}"
                )
            if tar_size == 0:
                m, view = None, np.zeros(0, np.uint8)
            else:
                with open(tar, "rb") as fh:
                    m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                view = np.frombuffer(m, dtype=np.uint8)
                maps.append(m)
            views.append(view)
            for k in {0, n - 1} if n else ():  # first and last member: catches stale indexes and bad tars
                _check_header(view, tar, int(index.image_offset[k]), index.names[k])
            for k in range(n):
                raw = bytes(view[index.label_offset[k] : index.label_offset[k] + index.label_size[k]])
                try:
                    labels.append(int(raw.decode("ascii").strip()))
                except (UnicodeDecodeError, ValueError):
                    raise ShardError(
                        f"{tar}: sample {index.names[k]!r} has a non-integer label {raw[:20]!r}"
                    ) from None
            shard_of.append(np.full(n, s, np.int32))
            offsets.append(index.image_offset)
            sizes.append(index.image_size)
            keys.extend(name.rsplit(".", 1)[0] for name in index.names)
    except BaseException:
        views.clear()
        for m in maps:
            with contextlib.suppress(BufferError):  # a local view still refers to it: closed when collected
                m.close()
        raise
    if expected is not None and len(expected) != len(tars):
        raise ShardError(
            f"{directory}: the meta file lists {len(expected)} shard counts for {len(tars)} shards"
        )
    labels_arr = np.asarray(labels, np.int64)
    if meta is not None and len(labels_arr) != meta.num_samples:
        raise ShardError(
            f"{directory}: the shards hold {len(labels_arr)} samples, the meta file says {meta.num_samples}"
        )
    if (
        meta is not None
        and len(labels_arr)
        and (labels_arr.min() < 0 or labels_arr.max() >= meta.num_classes)
    ):
        bad = int(np.argmax((labels_arr < 0) | (labels_arr >= meta.num_classes)))
        raise ShardError(
            f"{tars[int(np.concatenate(shard_of)[bad])]}: sample {keys[bad]!r} has label {labels_arr[bad]}, "
            f"outside 0..{meta.num_classes - 1}"
        )
    return ShardSet(
        directory=directory,
        shards=tars,
        shard_of=np.concatenate(shard_of),
        offsets=np.concatenate(offsets),
        sizes=np.concatenate(sizes),
        labels=labels_arr,
        keys=keys,
        _maps=maps,
        _views=views,
    )
