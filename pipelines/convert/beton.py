"""A streaming `.beton` writer for pre-encoded images: fields `image` (RGBImageField) and `label` (IntField).

FFCV's own `DatasetWriter` encodes inside its worker processes and cannot take bytes that were already
encoded for the DALI shards; it also waits forever when a worker dies. This writer lays out exactly the
same file (format version 2: header, field descriptors, per-sample metadata table, page-aligned data pages,
then the allocation table) from the main process, one sample after another, so an image is decoded and
encoded once for both formats. The dtypes below mirror `ffcv.types`; a test checks they still match the
installed FFCV, so converting never has to import FFCV (and torch).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from ..config import DataConfig
from .staging import naming

FORMAT_VERSION = 2
PAGE_SIZE = 1 << 23  # 8 MiB, FFCV's default (4 * 2 MiB)
HEADER_TYPE = np.dtype(
    [
        ("version", "<u2"),
        ("num_fields", "<u2"),
        ("page_size", "<u4"),
        ("num_samples", "<u8"),
        ("alloc_table_ptr", "<u8"),
    ],
    align=True,
)
FIELD_DESC_TYPE = np.dtype(
    [("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", (1024,)))], align=True
)
ALLOC_TABLE_TYPE = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
RGB_IMAGE_META = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
INT_META = np.dtype("<i8")
METADATA_TYPE = np.dtype([("", RGB_IMAGE_META), ("", INT_META)], align=True)  # ffcv.types.get_metadata_type
# (name, ffcv.types.TYPE_ID_HANDLER id): RGBImageField, IntField; the names the loader reads by default
FIELDS = ((DataConfig.image_field, 2), (DataConfig.label_field, 1))
MAX_SIDE = np.iinfo(np.uint16).max


def page_size_for(max_resolution: int) -> int:
    """8 MiB pages hold any image up to 1600 px a side; larger limits get larger power-of-two pages."""
    if not max_resolution:
        return 1 << 26
    need = 2 * max_resolution * max_resolution * 3
    size = PAGE_SIZE
    while size < need:
        size <<= 1
    return size


class BetonWriter:
    """`add()` samples in the order they should appear in the file, then `close()`.

    `capacity` bounds the number of samples (the metadata table is reserved up front, before the data pages);
    writing fewer, e.g. when bad images are skipped, is fine: readers look at `num_samples` rows only.
    """

    def __init__(self, path: str | os.PathLike, capacity: int, page_size: int = PAGE_SIZE):
        if page_size < (1 << 21) or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two >= 2 MiB, got {page_size}")
        self.path = Path(path)
        self.capacity = capacity
        self.page_size = page_size
        self.metadata = np.zeros(capacity, dtype=METADATA_TYPE)
        self.allocs = np.zeros(capacity, dtype=ALLOC_TABLE_TYPE)
        self.num_samples = 0
        self.metadata_start = HEADER_TYPE.itemsize + FIELD_DESC_TYPE.itemsize * len(FIELDS)
        end = self.metadata_start + METADATA_TYPE.itemsize * capacity
        self.data_start = -(-end // page_size) * page_size  # pages are aligned to absolute file offsets
        self._fp = open(self.path, "wb", buffering=1 << 20)  # noqa: SIM115 (closed by close()/abort())
        with naming(self.path):
            self._fp.write(self._header(0, 0).tobytes())
            self._fp.write(self._field_descriptors().tobytes())
            self._fp.seek(self.data_start)
        self._page = -1
        self._used = page_size  # no page open yet

    def _header(self, num_samples: int, alloc_ptr: int) -> np.ndarray:
        header = np.zeros((), dtype=HEADER_TYPE)
        header["version"] = FORMAT_VERSION
        header["num_fields"] = len(FIELDS)
        header["page_size"] = self.page_size
        header["num_samples"] = num_samples
        header["alloc_table_ptr"] = alloc_ptr
        return header

    def _field_descriptors(self) -> np.ndarray:
        desc = np.zeros(len(FIELDS), dtype=FIELD_DESC_TYPE)
        for i, (name, type_id) in enumerate(FIELDS):
            encoded = np.frombuffer(name.encode("ascii"), dtype="<u1")
            desc[i]["type_id"] = type_id
            desc[i]["name"][: len(encoded)] = encoded
        return desc

    def refuse(self, width: int, height: int, size: int) -> str | None:
        """Why an image of this size and payload cannot be stored (None when it can)."""
        if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
            return f"image size {width}x{height} does not fit FFCV's 16-bit sides (use --max-resolution)"
        if size > self.page_size:
            return f"encoded image of {size} bytes exceeds the {self.page_size}-byte FFCV page"
        return None

    def add(self, mode: int, width: int, height: int, data: bytes, label: int) -> int:
        """Append one sample; returns its index. A sample never straddles two pages (FFCV's rule)."""
        i = self.num_samples
        if i >= self.capacity:
            raise ValueError(f"more than the {self.capacity} samples reserved")
        size = len(data)
        problem = self.refuse(width, height, size)
        if problem:
            raise ValueError(problem)
        if self._used + size > self.page_size:
            self._next_page()
        ptr = self.data_start + self._page * self.page_size + self._used
        with naming(self.path):  # a full disk names the file
            self._fp.write(data)
        self._used += size
        self.metadata[i] = ((mode, width, height, ptr), label)
        self.allocs[i] = (i, ptr, size)
        self.num_samples = i + 1
        return i

    def _next_page(self) -> None:
        if self._page >= 0:
            self._pad_page()
        self._page += 1
        self._used = 0

    def _pad_page(self) -> None:
        # Pages are whole (the process cache reads a page at a time); the padding is left as a sparse hole.
        self._fp.seek(self.page_size - self._used, os.SEEK_CUR)
        self._used = self.page_size

    def close(self) -> None:
        if self._fp.closed:
            return
        with naming(self.path):
            self._finish()

    def _finish(self) -> None:
        if self._page >= 0:
            self._pad_page()
        alloc_ptr = self._fp.tell()
        if self._page < 0:  # no data at all: the allocation table starts where the data would
            alloc_ptr = self.data_start
        self._fp.seek(alloc_ptr)
        self._fp.write(self.allocs[: self.num_samples].tobytes())
        self._fp.seek(0)
        self._fp.write(self._header(self.num_samples, alloc_ptr).tobytes())
        self._fp.seek(self.metadata_start)
        self._fp.write(self.metadata[: self.num_samples].tobytes())
        self._fp.close()

    def abort(self) -> None:
        """Close without finishing (the staging folder is deleted); a failing flush (full disk) is moot."""
        if not self._fp.closed:
            with contextlib.suppress(OSError):
                self._fp.close()

    def __enter__(self) -> BetonWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
