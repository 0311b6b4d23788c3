"""FFCV's random crop, flip and padded translate, drawing from (seed, epoch, rank, batch, sample) alone.

ffcv 1.0.2's ops draw from numba's unseeded per-thread `np.random`, so runs differed and a resume could not
repeat its epoch. These subclasses keep FFCV's algorithms and replace each draw by `splitmix64` of the op's
epoch seed, the batch number, the image's slot and the draw's number: no thread ordering can change it. The
epoch seed and batch counter live in a host array (`EpochStreams`) read through its address (numba freezes
captured arrays); the backend resets it before each epoch.
"""

from __future__ import annotations

import numba
import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, RandomResizedCropRGBImageDecoder, imdecode, resize_crop
from ffcv.pipeline.compiler import Compiler
from ffcv.transforms import RandomHorizontalFlip, RandomTranslate
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@intrinsic
def _pointer(typingctx, address):
    """The integer `address` as a void pointer (what `numba.carray` reads from)."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


@numba.njit(nogil=True, cache=False)
def _mix(x):
    """splitmix64's finaliser: consecutive inputs give unrelated 64-bit outputs."""
    x = np.uint64(x)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@numba.njit(nogil=True)
def _batch_key(address):
    """The key of this call's batch; advances the op's batch counter (calls come one batch at a time)."""
    state = numba.carray(_pointer(address), (2,), np.uint64)
    batch = state[1]
    state[1] = batch + np.uint64(1)
    return _mix(state[0] + _mix(batch + _GOLDEN))


@numba.njit(nogil=True)
def _uniform(key, slot, draw):
    """Draw number `draw` of the image in `slot`: a float in [0, 1)."""
    x = _mix(key + _mix(np.uint64(slot) * _GOLDEN + np.uint64(draw)))
    return np.float64(x >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(nogil=True)
def _random_crop(key, slot, height, width, scale, ratio):
    """FFCV's `get_random_crop` (torchvision's RandomResizedCrop) with the draws of `_uniform`."""
    area = height * width
    log_ratio = np.log(ratio)
    for attempt in range(10):
        u_area, u_ratio = _uniform(key, slot, 4 * attempt), _uniform(key, slot, 4 * attempt + 1)
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect_ratio = np.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_ratio)
        w = int(round(np.sqrt(target_area * aspect_ratio)))
        h = int(round(np.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = int(_uniform(key, slot, 4 * attempt + 2) * (height - h + 1))
            j = int(_uniform(key, slot, 4 * attempt + 3) * (width - w + 1))
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


class EpochStreams:
    """One (epoch seed, batch counter) row per seeded op of a loader, read by the ops' compiled code."""

    def __init__(self) -> None:
        self._rows: list[np.ndarray] = []

    def new(self) -> int:
        """A row for one more op; returns its address (the array is kept alive here)."""
        row = np.zeros(2, np.uint64)
        self._rows.append(row)
        return row.ctypes.data

    def reset(self, seeds: list[int]) -> None:
        """Before an epoch's iterator starts: each op's seed for the epoch, batch counters back to 0."""
        for row, seed in zip(self._rows, seeds, strict=True):
            row[0], row[1] = seed, 0

    def __len__(self) -> int:
        return len(self._rows)


class SeededRandomResizedCrop(RandomResizedCropRGBImageDecoder):
    """`RandomResizedCropRGBImageDecoder` drawing its windows with `_random_crop`."""

    def __init__(self, address: int, output_size, scale, ratio):
        super().__init__(output_size, scale=scale, ratio=ratio)
        self.address = address

    def generate_code(self):
        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        scale, ratio = np.array(self.scale, np.float64), np.array(self.ratio, np.float64)
        address = self.address

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            key = _batch_key(address)
            for dst_ix in my_range(len(batch_indices)):
                field = metadata[batch_indices[dst_ix]]
                image_data = mem_read(field["data_ptr"], storage_state)
                height = np.uint32(field["height"])
                width = np.uint32(field["width"])
                if field["mode"] == jpg:
                    temp_buffer = temp_storage[dst_ix]
                    imdecode_c(
                        image_data, temp_buffer, height, width, height, width, 0, 0, 1, 1, False, False
                    )
                    temp_buffer = temp_buffer.reshape(-1)[: 3 * height * width].reshape(height, width, 3)
                else:
                    temp_buffer = image_data.reshape(height, width, 3)
                i, j, h, w = _random_crop(key, dst_ix, int(height), int(width), scale, ratio)
                resize_crop_c(temp_buffer, i, i + h, j, j + w, destination[dst_ix])
            return destination[: len(batch_indices)]

        decode.is_parallel = True
        return decode


class SeededHorizontalFlip(RandomHorizontalFlip):
    """`RandomHorizontalFlip(0.5)` with a `_uniform` coin per image."""

    def __init__(self, address: int):
        super().__init__(0.5)
        self.address = address

    def generate_code(self):
        my_range = Compiler.get_iterator()
        address = self.address

        def flip(images, dst):
            key = _batch_key(address)
            for i in my_range(images.shape[0]):
                if _uniform(key, i, 0) < 0.5:
                    dst[i] = images[i, :, ::-1]
                else:
                    dst[i] = images[i]
            return dst

        flip.is_parallel = True
        return flip


class SeededTranslate(RandomTranslate):
    """`RandomTranslate(padding, fill)` (RandomCrop(size, padding)) with `_uniform` shifts."""

    def __init__(self, address: int, padding: int, fill=(0, 0, 0)):
        super().__init__(padding=padding, fill=fill)
        self.address = address

    def generate_code(self):
        my_range = Compiler.get_iterator()
        pad, fill = self.padding, self.fill
        address = self.address

        def translate(images, dst):
            key = _batch_key(address)
            n, h, w, _ = images.shape
            dst[:] = fill
            dst[:, pad : pad + h, pad : pad + w] = images
            for i in my_range(n):
                y = int(_uniform(key, i, 0) * (2 * pad + 1))
                x = int(_uniform(key, i, 1) * (2 * pad + 1))
                images[i] = dst[i, y : y + h, x : x + w]
            return images

        translate.is_parallel = True
        return translate
