"""Every sample of a split checked when its loader opens, so damage stops a run before it trains or evaluates.

Damaged bytes would otherwise be found mid-epoch (DALI) or never (FFCV decodes a zero-filled JPEG as a
black image). The check reads only the bytes that tell (`image_bytes`), vectorised over all samples; raw
pixels (CIFAR-size images in a `.beton`) have no marker and are not checked. Foreign images are also held
to `data.max_pixels` (header size, no decode): one huge image would cost gigabytes a batch. Findings are
`cached` in `data.cache_dir`, keyed by the files' sizes and mtimes, so another rank or run reads them back.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DataError
from .image_bytes import JPEG_SOI, JPEG_TRAILER, PNG_SIGNATURE, jpeg_problem, whole_mask

if TYPE_CHECKING:
    from .config import DataConfig
    from .loader import LoaderSpec
    from .meta import DatasetMeta
    from .shards import ShardSet

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # frame headers
_HEADER_SCAN = 1 << 20  # bytes of a JPEG searched for its frame header (EXIF, ICC blocks come first)


def image_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header or a PNG's IHDR chunk, not decoding (None: not found)."""
    head = bytes(data[: len(PNG_SIGNATURE) + 16])
    if head.startswith(PNG_SIGNATURE) and len(head) >= 24 and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    if not head.startswith(JPEG_SOI):
        return None
    limit, buf = min(len(data), _HEADER_SCAN), b""
    i = 2
    while True:
        if i + 9 > len(buf):  # read on in growing steps: the frame header is usually in the first 1 KiB
            if len(buf) >= limit:
                return None
            buf = bytes(data[: min(limit, max(1024, 4 * len(buf), i + 9))])
            continue
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF:
            height, width = struct.unpack(">HH", buf[i + 5 : i + 9])
            return width, height
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        i += 2 + struct.unpack(">H", buf[i + 2 : i + 4])[0]


def largest_image(shards: ShardSet) -> tuple[int, int, int]:
    """(index, width, height) of the sample of a `ShardSet` with the most pixels by its header (-1, 0, 0:
    no readable header). A Python pass of a few microseconds a sample: `check_shard_pixels` caches it."""
    best = (-1, 0, 0)
    for i in range(len(shards)):
        size = image_size(shards._slice(i))
        if size is not None and size[0] * size[1] > best[1] * best[2]:
            best = (i, *size)
    return best


def cached(
    kind: str, path: Path, cache: Path, compute: Callable[[], Any], valid: Callable[[Any], bool]
) -> Any:
    """`compute()` (a JSON value), remembered in `<cache>/checks/` under a key of `kind` and the data's
    resolved path and its files' sizes and mtimes, so another open (another rank, the next run) of unchanged
    data reads it back; a record that is unreadable or fails `valid` is computed again. A cache that cannot
    be written only costs time."""
    from .fileio import atomic_write_text
    from .foreign import _key, fingerprint

    fp = fingerprint(path)
    file = cache / "checks" / f"{_key(kind, fp)}.json"
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and record.get("fingerprint") == fp and valid(record.get("value")):
        return record["value"]
    value = compute()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(file, json.dumps({"kind": kind, "fingerprint": fp, "value": value}) + "\n")
    except OSError:
        pass
    return value


def _indices(n: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(isinstance(i, int) and 0 <= i < n for i in v)


def check_shard_pixels(shards: ShardSet, max_pixels: int, cache: Path) -> None:
    """Refuse a `ShardSet` whose largest image (by its header) has more than `max_pixels` pixels
    (data.max_pixels), naming its shard and key; the largest image is `cached`."""
    n = len(shards)
    i, width, height = cached(
        "sizes",
        shards.directory,
        cache,
        lambda: list(largest_image(shards)),
        lambda v: isinstance(v, list) and len(v) == 3 and all(isinstance(x, int) for x in v) and v[0] < n,
    )
    if width * height > max_pixels:
        raise DataError(
            f"{shards.shards[shards.shard_of[i]]}: sample {shards.keys[i]!r} (index {i}) is a "
            f"{width}x{height} image, over data.max_pixels = {max_pixels}; resize it, or raise "
            "data.max_pixels"
        )


def beton_problems(path, reader, image_field: str) -> list[tuple[int, str]]:
    """(index, problem) of each JPEG sample of a `.beton` (FFCV `Reader`) that is not a whole JPEG; raw
    samples have no marker to check."""
    ix = list(reader.handlers).index(image_field)
    meta = reader.metadata[f"f{ix}"]
    jpg = np.flatnonzero(meta["mode"] == 0)  # RGBImageField: 0 = JPEG, 1 = raw pixels
    if not len(jpg):
        return []
    table = reader.alloc_table
    order = np.argsort(table["ptr"], kind="stable")
    ptrs = meta["data_ptr"][jpg].astype(np.int64)
    at = np.clip(np.searchsorted(table["ptr"][order], ptrs), 0, len(order) - 1)
    found = table["ptr"][order][at].astype(np.int64) == ptrs
    sizes = np.where(found, table["size"][order][at].astype(np.int64), 0)
    view = np.memmap(path, dtype=np.uint8, mode="r")
    ends = np.minimum(ptrs + sizes, len(view))
    suspects = np.flatnonzero(~whole_mask(view, ptrs, ends))
    out = []
    for k in suspects.tolist():
        problem = jpeg_problem(view[ptrs[k] : ends[k]], JPEG_TRAILER) if found[k] else "no allocated bytes"
        if problem is not None:
            out.append((int(jpg[k]), problem))
    return out


def check_beton_pixels(path, reader, image_field: str, max_pixels: int) -> None:
    """Refuse a `.beton` sample whose stored size exceeds `max_pixels` (data.max_pixels), naming its index."""
    ix = list(reader.handlers).index(image_field)
    meta = reader.metadata[f"f{ix}"]
    pixels = meta["width"].astype(np.int64) * meta["height"].astype(np.int64)
    big = np.flatnonzero(pixels > max_pixels)
    if len(big):
        i = int(big[0])
        raise DataError(
            f"{path}: sample {i} is a {meta['width'][i]}x{meta['height'][i]} image, over data.max_pixels = "
            f"{max_pixels} ({len(big)} such); resize it, or raise data.max_pixels"
        )


SKIP_CORRUPT = "data.skip_corrupt"  # what a left-out sample's `skipped` record says left it out


def checked_shards(shards: ShardSet, spec: LoaderSpec, meta: DatasetMeta) -> ShardSet:
    """The `ShardSet` a DALI loader serves: every sample checked (either split); a damaged one refused with
    what to do, or left out under data.skip_corrupt; foreign images held to data.max_pixels."""
    from .foreign import cache_root

    cache = cache_root(spec.cfg.cache_dir)
    try:
        compute = lambda: shards.corrupt_samples().tolist()  # noqa: E731
        bad = cached("corrupt-shards", spec.path, cache, compute, _indices(len(shards)))
        if bad and not spec.cfg.skip_corrupt:
            first = shards._corrupt(bad[0])
            raise type(first)(f"{first} [{len(bad)} corrupt sample(s) in all]")
        if not meta.max_resolution:  # foreign data: no converter bounded its sizes
            check_shard_pixels(shards, spec.cfg.max_pixels, cache)
    except BaseException:
        shards.close()
        raise
    return shards.without(np.asarray(bad, np.int64)) if bad else shards


def check_beton(path, reader, cfg: DataConfig, *, foreign: bool) -> None:
    """A `.beton` checked before its loader decodes anything: every JPEG sample whole (FFCV would decode a
    zero-filled one as a black image), and, for foreign data, every image within data.max_pixels."""
    from .foreign import cache_root

    bad = cached(
        f"corrupt-beton:{cfg.image_field}",
        Path(path),
        cache_root(cfg.cache_dir),
        lambda: [list(p) for p in beton_problems(path, reader, cfg.image_field)],
        lambda v: isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 for p in v),
    )
    if bad:
        i, problem = bad[0]
        raise DataError(
            f"{path}: sample {i} (field {cfg.image_field!r}) is corrupt: {problem} [{len(bad)} corrupt "
            "sample(s)]; re-convert the dataset (the ffcv backend cannot leave samples out; the dali backend "
            "can, with data.skip_corrupt = true)"
        )
    if foreign:
        check_beton_pixels(path, reader, cfg.image_field, cfg.max_pixels)
