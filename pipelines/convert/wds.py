"""WebDataset tar shards (`<key>.jpg` or `.png`, `<key>.cls`) and the index files DALI's readers take.

The tar is written by hand (ustar headers, 512-byte blocks) so every member's data offset is known as it is
written; the index is the `v1.2` format of DALI's `wds2idx`: a `v1.2 <samples>` line, then per sample
`<ext> <data offset> <size> <member name>` for each component. A test compares it with `wds2idx`'s output.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
from pathlib import Path

from .staging import naming

BLOCK = 512
INDEX_VERSION = "v1.2"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.tar"


def _member_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0  # reproducible bytes: the same input gives the same shards
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


class ShardWriter:
    """`add()` samples in order; a new shard starts every `shard_size` samples."""

    def __init__(self, directory: str | os.PathLike, shard_size: int):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.shards: list[str] = []
        self.counts: list[int] = []
        self.bytes_written = 0
        self._fp = None
        self._index: list[str] = []
        self._offset = 0

    def add(self, key: str, image: bytes, label: int, ext: str = "jpg") -> None:
        """Append one sample: its encoded image as member `<key>.<ext>` and its label as `<key>.cls`."""
        if "." in key or "/" in key:
            raise ValueError(f"webdataset keys may not contain '.' or '/': {key!r}")
        if self._fp is None or self.counts[-1] >= self.shard_size:
            self._open_next()
        parts = []
        with naming(self.dir / self.shards[-1]):  # a full disk names the shard
            for kind, payload in ((ext, image), ("cls", str(int(label)).encode("ascii"))):
                name = f"{key}.{kind}"
                header = _member_header(name, len(payload))
                data_offset = self._offset + len(header)
                self._write(header)
                self._write(payload)
                self._write(bytes(-len(payload) % BLOCK))
                parts.append(f"{kind} {data_offset} {len(payload)} {name}")
        self._index.append(" ".join(parts))
        self.counts[-1] += 1

    def _write(self, b: bytes) -> None:
        self._fp.write(b)
        self._offset += len(b)

    def _open_next(self) -> None:
        self._finish_shard()
        self.shards.append(shard_name(len(self.shards)))
        self.counts.append(0)
        self._fp = open(self.dir / self.shards[-1], "wb", buffering=1 << 20)  # noqa: SIM115 (closed per shard)
        self._offset = 0
        self._index = []

    def _finish_shard(self) -> None:
        if self._fp is None:
            return
        with naming(self.dir / self.shards[-1]):
            self._write(bytes(2 * BLOCK))  # end-of-archive marker
            fp, self._fp = self._fp, None
            fp.close()
        self.bytes_written += self._offset
        idx = self.dir / self.shards[-1].replace(".tar", ".idx")
        with naming(idx), open(idx, "w") as fh:
            fh.write(f"{INDEX_VERSION} {len(self._index)}\n")
            fh.write("\n".join(self._index) + "\n")
        self.bytes_written += idx.stat().st_size

    def close(self) -> tuple[list[str], list[int]]:
        """Finish the last shard; returns (shard names, samples per shard)."""
        self._finish_shard()
        return list(self.shards), list(self.counts)

    def abort(self) -> None:
        """Close without finishing (the staging folder is deleted); a failing flush (full disk) is moot."""
        if self._fp is not None:
            fp, self._fp = self._fp, None
            with contextlib.suppress(OSError):
                fp.close()
