"""Is this a whole image? The first and last bytes of an encoded JPEG or PNG, checked without decoding.

A sample whose bytes were zero-filled, overwritten or cut short still sits in a valid tar at its indexed
offsets, and a DALI decoder fed such bytes can crash the whole process with no message. Both formats begin
with a fixed signature and end with a fixed marker (JPEG: end-of-image; PNG: the IEND chunk, whose CRC never
varies), so a few byte reads tell most damage apart. The format is told by the bytes, not the member's
extension (ImageNet has a PNG named .JPEG). The converter writes JPEGs, and PNGs for tiny images; foreign
shards may hold either, and JPEGs with a trailer after the end marker (`image_problem`).
"""

from __future__ import annotations

import numpy as np

JPEG_SOI = b"\xff\xd8\xff"  # start of image, then the first segment's marker
JPEG_EOI = b"\xff\xd9"  # end of image: the converter writes nothing after it
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC: a PNG's last 8 bytes
JPEG_TRAILER = 4096  # bytes a JPEG read from shards may carry after its end marker
_S0, _S1, _S2 = JPEG_SOI
_E0, _E1 = JPEG_EOI


def jpeg_problem(data: bytes | np.ndarray, trailer: int = 0) -> str | None:
    """Why `data` is not a whole JPEG judged by its first and last bytes (None: it looks like one), allowing
    up to `trailer` bytes after the end marker (0: it must be the last two bytes)."""
    if len(data) < len(JPEG_SOI) + len(JPEG_EOI):
        return f"{len(data)} bytes, too short for a JPEG"
    head, tail = bytes(data[: len(JPEG_SOI)]), bytes(data[-len(JPEG_EOI) :])
    if head != JPEG_SOI:
        return f"no JPEG start marker (it begins {head.hex(' ')}): overwritten or zero-filled"
    if tail != JPEG_EOI:
        window = bytes(data[max(len(JPEG_SOI), len(data) - trailer - len(JPEG_EOI)) :]) if trailer else b""
        if JPEG_EOI in window:
            return None
        where = f" in its last {trailer + len(JPEG_EOI)} bytes" if trailer else ""
        return f"no JPEG end marker{where} (it ends {tail.hex(' ')}): truncated or overwritten"
    return None


def image_problem(data: bytes | np.ndarray) -> str | None:
    """Why `data` is neither a whole JPEG (a trailer of up to `JPEG_TRAILER` bytes allowed) nor a whole PNG
    (None: it looks like one of them). Foreign JPEGs may carry zero padding or metadata after the end
    marker, which decoders never read. That stays safe: FF D9 occurs nowhere in entropy-coded data (an FF
    there is followed by 00 or a restart marker), so bytes cut or zeroed before the marker have none in
    their tail (short of a cut within JPEG_TRAILER bytes of an embedded thumbnail's end)."""
    head = bytes(data[: len(PNG_SIGNATURE)])
    if head.startswith(JPEG_SOI):
        return jpeg_problem(data, JPEG_TRAILER)
    if head == PNG_SIGNATURE:
        whole = len(data) >= len(PNG_SIGNATURE) + len(PNG_END)
        tail = bytes(data[-len(PNG_END) :]) if whole else b""
        if tail != PNG_END:
            return f"no PNG end chunk (it ends {tail.hex(' ')}): truncated or overwritten"
        return None
    return f"no JPEG or PNG start marker (it begins {head.hex(' ')}): overwritten or zero-filled"


def looks_whole(view: np.ndarray, start: int, end: int) -> bool:
    """`image_problem(view[start:end]) is None`, fast for the JPEGs that end with their marker: five byte
    reads, no copy."""
    if (
        end - start >= len(JPEG_SOI) + len(JPEG_EOI)
        and view[start] == _S0
        and view[start + 1] == _S1
        and view[start + 2] == _S2
        and view[end - 2] == _E0
        and view[end - 1] == _E1
    ):
        return True
    return image_problem(view[start:end]) is None


def whole_mask(view: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """True where `view[start:end]` starts and ends as a JPEG that ends with its marker: five byte reads a
    sample, vectorised (the rest, PNGs and JPEGs with a trailer, go through `image_problem`)."""
    starts, ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
    ok = ends - starts >= len(JPEG_SOI) + len(JPEG_EOI)
    s, e = np.where(ok, starts, 0), np.where(ok, ends, len(JPEG_SOI) + len(JPEG_EOI))
    if len(view) == 0:
        return np.zeros(len(starts), bool)
    for k, byte in enumerate(JPEG_SOI):
        ok &= view[np.minimum(s + k, len(view) - 1)] == byte
    for k, byte in enumerate(JPEG_EOI):
        ok &= view[np.clip(e - len(JPEG_EOI) + k, 0, len(view) - 1)] == byte
    return ok
