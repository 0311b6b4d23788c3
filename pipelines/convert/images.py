"""Image decoding and normalising: any input -> correct RGB, longest side <= max resolution, encoded once.

One decode per sample gives both writers' payloads: for FFCV, JPEG at `jpeg_quality` (cv2, as FFCV's 'jpg'
mode) or raw uint8 pixels for tiny images; for DALI, the source file itself when nothing has to change (an
upright RGB JPEG, small enough, nothing after its end marker), a lossless PNG for tiny images, else the
FFCV JPEG. Every DALI sample thus carries the markers the loader checks (`image_bytes.image_problem`), so
one that does not is damage. CMYK and grayscale JPEGs, PNG data behind a .JPEG name, palette/alpha images
and EXIF orientation all end as upright RGB.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image

from ..image_bytes import image_problem, jpeg_problem

FFCV_JPG, FFCV_RAW = 0, 1  # RGBImageField's per-sample `mode` values
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that makes the image upright (as PIL.ImageOps.exif_transpose does)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
DALI_JPG, DALI_PNG = "jpg", "png"  # a DALI sample's encoding, named as its WebDataset member extension
MAX_SIDE = 65535  # JPEG's limit, and FFCV's (16-bit sizes)

# cv2 would otherwise spawn its own threads inside every worker process and oversubscribe the cores.
cv2.setNumThreads(1)


@dataclass(frozen=True)
class EncodeOptions:
    max_resolution: int = 512  # longest side; 0 = keep the source size
    jpeg_quality: int = 90
    ffcv: bool = True  # produce the FFCV payload
    dali: bool = True  # produce the DALI payload
    raw_max_pixels: int = 64 * 64  # FFCV stores images of at most this many pixels raw, DALI as PNG


class Encoded(NamedTuple):
    width: int
    height: int
    ffcv_mode: int  # FFCV_JPG or FFCV_RAW (meaningless when no FFCV payload was asked for)
    ffcv_data: bytes | None
    dali_data: bytes | None  # None with dali_same_as_ffcv: the FFCV JPEG is the DALI one
    dali_same_as_ffcv: bool = False
    passthrough: bool = False  # dali_data is the source file, byte for byte
    dali_ext: str = DALI_JPG  # DALI_JPG or DALI_PNG

    def dali_bytes(self) -> bytes | None:
        return self.ffcv_data if self.dali_same_as_ffcv else self.dali_data


def target_size(width: int, height: int, max_resolution: int) -> tuple[int, int]:
    """FFCV's `resizer` rule: scale the longest side down to max_resolution, never up, sizes floored."""
    longest = max(width, height)
    if not max_resolution or longest <= max_resolution:
        return width, height
    ratio = max_resolution / longest
    return max(1, int(ratio * width)), max(1, int(ratio * height))


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)]
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def encode_png(rgb: np.ndarray) -> bytes:
    """Lossless: DALI's `decoders.image` gives back these exact pixels (on CPU, and in `mixed` mode)."""
    ok, buf = cv2.imencode(
        ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [int(cv2.IMWRITE_PNG_COMPRESSION), 6]
    )
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block must not lose the image: treat it as upright
        return 1
    return value if value in _TRANSPOSE else 1


def encode_array(rgb: np.ndarray, opts: EncodeOptions, source: bytes | None = None) -> Encoded:
    """Resize an upright HxWx3 uint8 image and encode it for the requested formats."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    tw, th = target_size(w, h, opts.max_resolution)
    if max(tw, th) > MAX_SIDE:
        raise ValueError(
            f"a {tw}x{th} image exceeds the {MAX_SIDE}-pixel side of JPEG and FFCV (lower --max-resolution)"
        )
    if (tw, th) != (w, h):
        rgb = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA)
    rgb = np.ascontiguousarray(rgb)
    tiny = tw * th <= opts.raw_max_pixels
    ffcv_mode, ffcv_data, dali, same, ext = FFCV_JPG, None, None, False, DALI_JPG
    if opts.ffcv and tiny:
        ffcv_mode, ffcv_data = FFCV_RAW, rgb.tobytes()
    elif opts.ffcv:
        ffcv_data = encode_jpeg(rgb, opts.jpeg_quality)
        same = opts.dali and source is None
    if opts.dali and source is not None:
        dali = source
    elif opts.dali and tiny:
        dali, ext = encode_png(rgb), DALI_PNG
    elif opts.dali and not same:
        dali = encode_jpeg(rgb, opts.jpeg_quality)
    return Encoded(tw, th, ffcv_mode, ffcv_data, dali, same, source is not None and opts.dali, ext)


def decode(data: bytes, opts: EncodeOptions) -> tuple[np.ndarray | None, bool, tuple[int, int]]:
    """(upright RGB pixels at the target size, whether the bytes can go to DALI unchanged, source size).

    Pixels are None when only a pass-through DALI copy is wanted: the image is then still entropy-decoded in
    full (at 1/8 scale, which skips most of the IDCT) to prove it is readable.
    """
    im = Image.open(io.BytesIO(data))
    if im.format in ("JPEG", "PNG") and (problem := image_problem(data)):
        raise ValueError(problem)  # zero-filled or cut short: PIL would decode the rest as black or grey
    orientation = _orientation(im)
    w, h = im.size
    upright = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    tw, th = target_size(*upright, opts.max_resolution)
    passthrough = (
        im.format == "JPEG"
        and im.mode == "RGB"
        and orientation == 1
        and (tw, th) == upright
        and jpeg_problem(data) is None  # trailing bytes after the end marker: re-encoded
    )
    if passthrough and not opts.ffcv:
        im.draft(im.mode, (max(1, w // 8), max(1, h // 8)))
        im.load()
        return None, True, (w, h)
    if (tw, th) != upright:
        # libjpeg decodes at 1/2, 1/4 or 1/8 scale where the target is that much smaller (the result is still
        # >= the target; the INTER_AREA resize below gives FFCV's exact size). A no-op for other formats.
        im.draft(im.mode, (th, tw) if orientation in (5, 6, 7, 8) else (tw, th))
    im.load()
    if orientation != 1:
        im = im.transpose(_TRANSPOSE[orientation])
    if im.mode.startswith(
        "I;16"
    ):  # 16-bit grayscale: PIL's convert() would clip it to 255, keep the top byte
        im = Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8), "L")
    if im.mode != "RGB":
        im = im.convert("RGB")
    rgb = np.asarray(im)
    if rgb.shape[:2] != (th, tw):
        rgb = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA)
    return rgb, passthrough, (w, h)


def encode_bytes(data: bytes, opts: EncodeOptions) -> Encoded:
    """Decode an image file's bytes once and encode it for the requested formats."""
    rgb, passthrough, (w, h) = decode(data, opts)
    if rgb is None:
        return Encoded(w, h, FFCV_JPG, None, data, False, True)
    return encode_array(rgb, opts, source=data if passthrough else None)
