"""The DALI index of one WebDataset shard (`wds2idx`'s `v1.x` format), parsed and checked against its tar.

Split from `shards.py`, which opens whole shard folders on top of it. Every error names the index file and
its line, or the tar and the member offset, or the tar and the sample's key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

IMAGE_EXTS = ("jpg", "jpeg", "png")  # a member's extension, compared in lower case
LABEL_EXT = "cls"
TAR_BLOCK = 512


class ShardError(DataError):
    """A shard or its index is missing, malformed or inconsistent; the message names the file."""


@dataclass
class ShardIndex:
    image_offset: np.ndarray
    image_size: np.ndarray
    label_offset: np.ndarray
    label_size: np.ndarray
    names: list[str]


def tar_files(folder: Path) -> list[Path]:
    """The `*.tar` shards of a folder, sorted, each one that `stat` reaches: a dangling symlink or a loop of
    them is a one-line `ShardError` naming it, not an OSError from whatever touches it first."""
    tars = sorted(Path(folder).glob("*.tar"))
    for tar in tars:
        check_reachable(tar)
    return tars


def check_reachable(tar: Path) -> None:
    """A `ShardError` naming `tar` when `stat` cannot reach it (a broken or looping symlink)."""
    try:
        tar.stat()
    except OSError as exc:
        raise ShardError(
            f"{tar}: cannot open this shard: {exc.strerror or exc} (a broken or looping symlink?)"
        ) from None


def parse_index(idx: Path, tar: Path) -> ShardIndex:
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
            comps[ext.lower()] = (int(off), int(size), row[k + 3] if width == 4 else "")
        image = next((comps[e] for e in IMAGE_EXTS if e in comps), None)
        if image is None or LABEL_EXT not in comps:
            raise ShardError(_missing_member(idx, n, tar, comps, image is None))
        img_off.append(image[0])
        img_size.append(image[1])
        lab_off.append(comps[LABEL_EXT][0])
        lab_size.append(comps[LABEL_EXT][1])
        names.append(image[2] or f"sample {n - 2}")
    as64 = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    return ShardIndex(as64(img_off), as64(img_size), as64(lab_off), as64(lab_size), names)


def member_key(name: str) -> str:
    """A WebDataset sample's key: the member's name up to the first dot of its base name (as `wds2idx`)."""
    dot = name.find(".", name.rfind("/") + 1)
    return name if dot < 0 else name[:dot]


def _missing_member(idx: Path, n: int, tar: Path, comps: dict, no_image: bool) -> str:
    """Name the shard, the sample's key (from its members' names where the index has them) and what lacks."""
    names = [c[2] for c in comps.values() if c[2]]
    key = member_key(names[0]) if names else f"sample {n - 2}"
    what = f"image member (.{', .'.join(IMAGE_EXTS)})" if no_image else f".{LABEL_EXT} label member"
    return f"{tar}: sample {key!r} has no {what}; its members: {names or sorted(comps)} (index {idx}:{n})"


def check_header(buf: np.ndarray, tar: Path, offset: int, name: str) -> None:
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
