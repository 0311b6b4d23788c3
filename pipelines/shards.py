"""Random access to the WebDataset shards of a `.dali` folder (or any folder of shards) through DALI indexes.

`read_shard_index` parses each shard's `.idx` (beside it, or in `index_dir`); `map_shards` memory-maps the
tars and reads the `.cls` labels, so the DALI backend can feed any order as slices of the maps. Opening
checks what is cheap (indexes, offsets, tar headers, integer labels); every error names the shard (and
sample). Sample bytes are checked when a loader opens (`sample_check`) and as they are handed out
(`jpegs`), catching damage on which a DALI decoder can crash the whole process.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .image_bytes import image_problem, jpeg_problem, looks_whole, whole_mask
from .shard_index import (
    ShardError,
    ShardIndex,
    check_header,
    check_reachable,
    member_key,
    parse_index,
    tar_files,
)

if TYPE_CHECKING:
    from .meta import DatasetMeta

__all__ = [
    "CorruptSampleError",
    "ShardError",
    "ShardSet",
    "check_shard_folder",
    "image_problem",
    "jpeg_problem",
    "map_shards",
    "open_shards",
    "read_shard_index",
    "shard_paths",
]


class CorruptSampleError(ShardError, RuntimeError):
    """A sample whose bytes are not a whole JPEG; the message names shard, key and sample index. Met while
    an epoch runs, so it is also the RuntimeError an epoch's loader failures are."""


@dataclass
class ShardSet:
    """Every sample of a shard folder: its shard, its image slice and its label, in shard order."""

    directory: Path
    shards: list[Path]
    shard_of: np.ndarray  # int32, per sample
    offsets: np.ndarray  # int64, image data offset inside its shard
    sizes: np.ndarray  # int64, image size
    labels: np.ndarray  # int64
    keys: list[str]
    dropped: tuple[dict, ...] = ()  # samples left out by `without` (skip_corrupt): index, shard, key, ...
    _maps: list[mmap.mmap] = field(default_factory=list, repr=False)
    _views: list[np.ndarray] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def jpegs(self, indices: np.ndarray) -> list[np.ndarray]:
        """The encoded bytes of `indices` as uint8 views into the mapped shards (no copy), each checked to
        start and end like a JPEG or a PNG: a `CorruptSampleError` names the first that does not."""
        out = []
        for i in indices.tolist():
            view, start, end = self._views[self.shard_of[i]], self.offsets[i], self.offsets[i] + self.sizes[i]
            if not looks_whole(view, start, end):
                raise self._corrupt(i)
            out.append(view[start:end])
        return out

    def _slice(self, i: int) -> np.ndarray:
        return self._views[self.shard_of[i]][self.offsets[i] : self.offsets[i] + self.sizes[i]]

    def _corrupt(self, i: int) -> CorruptSampleError:
        return CorruptSampleError(
            f"{self.shards[self.shard_of[i]]}: sample {self.keys[i]!r} (index {i}) is corrupt: "
            f"{image_problem(self._slice(i))}; re-convert the dataset, or set data.skip_corrupt = true "
            "to leave such samples out of training and evaluation (they are listed at start)"
        )

    def corrupt_samples(self, indices: np.ndarray | None = None) -> np.ndarray:
        """Indices (among `indices`, default all) of the samples `jpegs` would refuse, in order. Touches two
        pages a sample, vectorised: a pass over the shards at a small fraction of their size."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, np.int64)
        bad = []
        for s, view in enumerate(self._views):
            mine = idx[self.shard_of[idx] == s]
            starts = self.offsets[mine]
            suspects = mine[~whole_mask(view, starts, starts + self.sizes[mine])]
            bad += [i for i in suspects.tolist() if image_problem(self._slice(i)) is not None]
        return np.asarray(sorted(bad), np.int64)

    def without(self, indices: np.ndarray) -> ShardSet:
        """This set less `indices`, recorded in `dropped`; it shares the mapped shards (close only one)."""
        drop = np.unique(np.asarray(indices, np.int64))
        if not len(drop):
            return self
        keep = np.setdiff1d(np.arange(len(self)), drop)
        dropped = tuple(
            {
                "index": int(i),
                "shard": str(self.shards[self.shard_of[i]]),
                "key": self.keys[i],
                "label": int(self.labels[i]),
                "error": image_problem(self._slice(i)) or "dropped",
            }
            for i in drop.tolist()
        )
        return ShardSet(
            directory=self.directory,
            shards=self.shards,
            shard_of=self.shard_of[keep],
            offsets=self.offsets[keep],
            sizes=self.sizes[keep],
            labels=self.labels[keep],
            keys=[self.keys[i] for i in keep.tolist()],
            dropped=self.dropped + dropped,
            _maps=self._maps,
            _views=self._views,
        )

    def describe(self, i: int) -> str:
        return f"{self.shards[self.shard_of[i]]}:{self.keys[i]}"

    def undecodable(self, indices: np.ndarray) -> list[int]:
        """The samples among `indices` that PIL cannot decode (slow: for error messages only)."""
        import io

        from PIL import Image

        bad = []
        for i in indices.tolist():
            data = self._slice(i)
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
    return tar_files(directory)


def check_shard_folder(path: Path) -> None:
    """Refuse what cannot be a shard folder before anything reads it (a `.beton`, a meta file)."""
    if not path.is_dir():
        what = "missing" if not path.exists() else "a file"
        raise ShardError(f"{path}: the dali backend reads a <stem>.dali folder of shards ({what})")


def read_shard_index(
    directory: str | os.PathLike, meta: DatasetMeta | None = None, index_dir: str | os.PathLike | None = None
) -> list[tuple[Path, ShardIndex]]:
    """Each shard of the folder (the meta's list, else every `*.tar`) with its parsed index, from beside it
    or from `index_dir`; a shard count the meta records for it must match its index."""
    directory = Path(directory)
    check_shard_folder(directory)
    tars = shard_paths(directory, meta)
    if not tars:
        raise ShardError(f"{directory}: no .tar shards in this folder")
    expected = meta.formats["dali"].get("samples_per_shard") if meta and "dali" in meta.formats else None
    if expected is not None and len(expected) != len(tars):
        raise ShardError(
            f"{directory}: the meta file lists {len(expected)} shard counts for {len(tars)} shards"
        )
    out = []
    for s, tar in enumerate(tars):
        idx = Path(index_dir, tar.name).with_suffix(".idx") if index_dir else tar.with_suffix(".idx")
        if not tar.is_file():
            if tar.is_symlink():
                check_reachable(tar)
            raise FileNotFoundError(f"{tar}: shard listed in the meta file is missing")
        if not idx.is_file():
            where = f"in {idx.parent}" if index_dir else "beside it"
            raise FileNotFoundError(
                f"{tar}: no index file {idx.name} {where}; make one with DALI's "
                f"`wds2idx {tar} {idx}` or re-run tools/convert_datasets.py"
            )
        index = parse_index(idx, tar)
        if expected is not None and expected[s] != len(index.names):
            raise ShardError(f"{idx}: indexes {len(index.names)} samples, the meta file says {expected[s]}")
        out.append((tar, index))
    return out


def map_shards(directory: str | os.PathLike, indexes: list[tuple[Path, ShardIndex]]) -> ShardSet:
    """Memory-map each indexed shard, check its index against it and read every sample's label."""
    shard_of, offsets, sizes, labels, keys = [], [], [], [], []
    maps, views = [], []
    try:
        for s, (tar, index) in enumerate(indexes):
            n = len(index.names)
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
                check_header(view, tar, int(index.image_offset[k]), index.names[k])
            for k in range(n):
                raw = bytes(view[index.label_offset[k] : index.label_offset[k] + index.label_size[k]])
                try:
                    label = int(raw.decode("ascii").strip())
                except (UnicodeDecodeError, ValueError):
                    label = None
                if label is None or label < 0:
                    what = f"a non-integer label {raw[:20]!r}" if label is None else f"label {label}"
                    raise ShardError(
                        f"{tar}: sample {member_key(index.names[k])!r} has {what}"
                        + ("" if label is None else ": labels must be class indices 0, 1, ...")
                    )
                labels.append(label)
            shard_of.append(np.full(n, s, np.int32))
            offsets.append(index.image_offset)
            sizes.append(index.image_size)
            keys.extend(member_key(name) for name in index.names)
    except BaseException:
        views.clear()
        for m in maps:
            with contextlib.suppress(BufferError):  # a local view still refers to it: closed when collected
                m.close()
        raise
    return ShardSet(
        directory=Path(directory),
        shards=[tar for tar, _ in indexes],
        shard_of=np.concatenate(shard_of),
        offsets=np.concatenate(offsets),
        sizes=np.concatenate(sizes),
        labels=np.asarray(labels, np.int64),
        keys=keys,
        _maps=maps,
        _views=views,
    )


def open_shards(
    directory: str | os.PathLike,
    meta: DatasetMeta | None = None,
    *,
    index_dir: str | os.PathLike | None = None,
) -> ShardSet:
    """`map_shards(read_shard_index(...))`: a shard folder opened and checked, ready to slice."""
    return map_shards(directory, read_shard_index(directory, meta, index_dir))
