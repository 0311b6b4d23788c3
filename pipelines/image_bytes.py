"""Is this a whole image? The first and last bytes of an encoded JPEG or PNG, checked without decoding.

A sample whose bytes were zero-filled, overwritten or cut short still sits in a valid tar at the offsets its
index gives; a DALI decoder fed such bytes can crash the whole process with no message. Both formats begin
with a fixed signature and end with a fixed marker (JPEG: end-of-image; PNG: the IEND chunk, whose CRC never
varies), so a handful of byte reads on pages the decoder reads anyway tells most damage apart. The format is
told by the bytes, not the member's extension (ImageNet has a PNG named .JPEG). The converter writes JPEGs
only; foreign WebDataset shards may hold PNGs, which must not be taken for broken JPEGs.
"""

from __future__ import annotations

import numpy as np

JPEG_SOI = b"\xff\xd8\xff"  # start of image, then the first segment's marker
JPEG_EOI = b"\xff\xd9"  # end of image: the converter writes nothing after it
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC: a PNG's last 8 bytes
_S0, _S1, _S2 = JPEG_SOI
_E0, _E1 = JPEG_EOI


def jpeg_problem(data: bytes | np.ndarray) -> str | None:
    """Why `data` is not a whole JPEG judged by its first and last bytes (None: it looks like one)."""
    if len(data) < len(JPEG_SOI) + len(JPEG_EOI):
        return f"{len(data)} bytes, too short for a JPEG"
    head, tail = bytes(data[: len(JPEG_SOI)]), bytes(data[-len(JPEG_EOI) :])
    if head != JPEG_SOI:
        return f"no JPEG start marker (it begins {head.hex(' ')}): overwritten or zero-filled"
    if tail != JPEG_EOI:
        return f"no JPEG end marker (it ends {tail.hex(' ')}): truncated or overwritten"
    return None


def image_problem(data: bytes | np.ndarray) -> str | None:
    """Why `data` is neither a whole JPEG nor a whole PNG (None: it looks like one of them)."""
    head = bytes(data[: len(PNG_SIGNATURE)])
    if head.startswith(JPEG_SOI):
        return jpeg_problem(data)
    if head == PNG_SIGNATURE:
        whole = len(data) >= len(PNG_SIGNATURE) + len(PNG_END)
        tail = bytes(data[-len(PNG_END) :]) if whole else b""
        if tail != PNG_END:
            return f"no PNG end chunk (it ends {tail.hex(' ')}): truncated or overwritten"
        return None
    return f"no JPEG or PNG start marker (it begins {head.hex(' ')}): overwritten or zero-filled"


def looks_whole(view: np.ndarray, start: int, end: int) -> bool:
    """`image_problem(view[start:end]) is None`, fast for JPEGs: five byte reads, no copy."""
    if end - start >= len(JPEG_SOI) + len(JPEG_EOI) and view[start] == _S0:
        return (
            view[start + 1] == _S1
            and view[start + 2] == _S2
            and view[end - 2] == _E0
            and view[end - 1] == _E1
        )
    return image_problem(view[start:end]) is None
