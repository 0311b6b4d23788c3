"""The DALI backend's random crop windows, padded-crop offsets and flips, drawn on the host per batch.

DALI's random operators are seeded once per pipeline and carry state across epochs, so a resumed run drew
other crops than an uninterrupted one. Here batch `i` of epoch `e` on rank `r` draws from its own NumPy
generator seeded by (seed, rank, epoch, i), fed to the pipeline with the bytes: the same batch gets the same
draws in any run, with one pipeline built once (a rebuild per epoch costs seconds and allocates during
capture). The algorithms are those of the operators replaced: torchvision's RandomResizedCrop (10 attempts,
then the centre crop with the ratio clamped), a uniform integer offset in [0, 2 * padding], a fair coin.
"""

from __future__ import annotations

import io

import numpy as np

ATTEMPTS = 10
# Start-of-frame markers (baseline, progressive, lossless, arithmetic): they hold the image's height, width.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def batch_generator(seed: int, rank: int, epoch: int, batch: int, stream: int) -> np.random.Generator:
    """The generator of one kind of draw (`stream`: which view's crop, which flip) for one batch."""
    return np.random.default_rng([seed, rank, epoch, batch, stream, 0xDA11])


def image_size(data) -> tuple[int, int]:
    """(height, width) from an encoded image's header: JPEG's start-of-frame segment, any other format
    through PIL (which reads only the header too)."""
    b = memoryview(data).cast("B")
    n = len(b)
    if n > 4 and b[0] == 0xFF and b[1] == 0xD8:
        i = 2
        while i + 9 < n:
            if b[i] != 0xFF:
                break
            while i < n and b[i] == 0xFF:  # fill bytes
                i += 1
            marker = b[i]
            i += 1
            if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers: no length
                continue
            if marker in _SOF:
                return (b[i + 3] << 8) | b[i + 4], (b[i + 5] << 8) | b[i + 6]
            i += (b[i] << 8) | b[i + 1]
    from PIL import Image

    with Image.open(io.BytesIO(bytes(b))) as img:
        return img.height, img.width


def resized_crop_windows(
    rng: np.random.Generator, heights: np.ndarray, widths: np.ndarray, scale, ratio
) -> tuple[np.ndarray, np.ndarray]:
    """RandomResizedCrop's windows for images of these sizes, as (anchor, shape) float32 [N, 2] each,
    normalised to the image and in (x, y) order: the first of `ATTEMPTS` (area, log-ratio) draws that fits,
    at a uniform integer position; else the whole image with its ratio clamped into `ratio`, centred."""
    h = heights.astype(np.float64)[:, None]
    w = widths.astype(np.float64)[:, None]
    n = len(heights)
    target = h * w * rng.uniform(scale[0], scale[1], (n, ATTEMPTS))
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), (n, ATTEMPTS)))
    cw, ch = np.round(np.sqrt(target * aspect)), np.round(np.sqrt(target / aspect))
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = fits.argmax(axis=1)
    found = fits[np.arange(n), first]
    cw, ch = cw[np.arange(n), first], ch[np.arange(n), first]
    h, w = h[:, 0], w[:, 0]
    # the fallback: the whole image, its ratio clamped into [ratio[0], ratio[1]]
    in_ratio = w / h
    lo, hi = min(ratio), max(ratio)
    fw = np.where(in_ratio > hi, np.round(h * hi), w)
    fh = np.where(in_ratio < lo, np.round(w / lo), h)
    cw, ch = np.where(found, cw, fw), np.where(found, ch, fh)
    u = rng.random((n, 2))
    y = np.where(found, np.floor(u[:, 0] * (h - ch + 1)), (h - ch) // 2)
    x = np.where(found, np.floor(u[:, 1] * (w - cw + 1)), (w - cw) // 2)
    anchor = np.stack([x / w, y / h], axis=1).astype(np.float32)
    shape = np.stack([cw / w, ch / h], axis=1).astype(np.float32)
    return anchor, shape


def padded_offsets(rng: np.random.Generator, n: int, padding: int) -> tuple[np.ndarray, np.ndarray]:
    """RandomCrop(size, padding)'s offsets as `fn.crop`'s crop_pos_x / crop_pos_y: k / (2 * padding) for a
    uniform integer k in [0, 2 * padding], float32 [N] each."""
    if padding == 0:
        return np.zeros(n, np.float32), np.zeros(n, np.float32)
    k = rng.integers(0, 2 * padding + 1, (2, n))
    pos = (k / (2 * padding)).astype(np.float32)
    return pos[0], pos[1]


def coins(rng: np.random.Generator, n: int) -> np.ndarray:
    """A fair coin per image, int32 [N] (`fn.flip`'s `horizontal`)."""
    return rng.integers(0, 2, n, dtype=np.int32)
