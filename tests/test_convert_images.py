"""Image normalising: every input ends as upright RGB at most --max-resolution a side, encoded once."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from pipelines.convert.images import (
    DALI_JPG,
    DALI_PNG,
    FFCV_JPG,
    FFCV_RAW,
    EncodeOptions,
    encode_array,
    encode_bytes,
    target_size,
)
from pipelines.shards import image_problem, jpeg_problem
from tests.convert_util import pattern

OPTS = EncodeOptions(max_resolution=64, jpeg_quality=90, raw_max_pixels=16 * 16)


def jpeg(arr_or_im, **kw) -> bytes:
    im = arr_or_im if isinstance(arr_or_im, Image.Image) else Image.fromarray(arr_or_im)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=kw.pop("quality", 95), **kw)
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG"
    return np.asarray(im.convert("RGB")).astype(int)


def ffcv_pixels(enc) -> np.ndarray:
    if enc.ffcv_mode == FFCV_RAW:
        return np.frombuffer(enc.ffcv_data, np.uint8).reshape(enc.height, enc.width, 3).astype(int)
    return pixels(enc.ffcv_data)


def close(a: np.ndarray, b: np.ndarray, tol: float = 4.0) -> bool:
    return a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < tol


def test_target_size_is_ffcvs_resizer_rule():
    from ffcv.fields.rgb_image import resizer

    for w, h in [(1000, 750), (750, 1000), (513, 512), (512, 512), (300, 200), (999, 37), (2000, 7)]:
        expected = resizer(np.zeros((h, w, 3), np.uint8), 512).shape[:2]
        assert target_size(w, h, 512)[::-1] == expected
    assert target_size(4000, 3, 512) == (512, 1)  # never a zero side (FFCV's writer crashes on this one)
    assert target_size(2000, 1000, 0) == (2000, 1000)


def test_small_rgb_jpeg_passes_through_for_dali_and_is_reencoded_for_ffcv():
    src = jpeg(pattern(1, 2, (60, 50)), quality=97)
    enc = encode_bytes(src, OPTS)
    assert enc.passthrough and enc.dali_bytes() == src  # byte for byte
    assert enc.ffcv_mode == FFCV_JPG and enc.ffcv_data != src  # FFCV gets --jpeg-quality, as its writer does
    assert (enc.width, enc.height) == (60, 50)
    assert close(ffcv_pixels(enc), pixels(src))
    only_dali = encode_bytes(src, EncodeOptions(64, 90, ffcv=False, raw_max_pixels=0))
    assert only_dali.ffcv_data is None and only_dali.dali_bytes() == src


@pytest.mark.parametrize("tail", [b"\x00" * 7, b"camera trailer", b"\xff\xd9\x00"])
@pytest.mark.parametrize("ffcv", [True, False])
def test_jpeg_with_bytes_after_its_end_is_reencoded_not_passed_through(tail, ffcv):
    """The converter's JPEGs end with their end marker, so that a strict check tells damage in its own
    shards: a file with bytes after the marker is re-encoded, however readable (the DALI loader would
    accept it, as it accepts foreign JPEGs with a trailer)."""
    src = jpeg(pattern(1, 2, (60, 50)), quality=97) + tail
    enc = encode_bytes(src, EncodeOptions(64, 90, ffcv=ffcv, raw_max_pixels=0))
    assert not enc.passthrough and enc.dali_bytes() != src
    assert jpeg_problem(src) is not None and jpeg_problem(enc.dali_bytes()) is None
    assert image_problem(src) is None  # what the loader checks
    assert close(pixels(enc.dali_bytes()), pixels(src))


def test_large_jpeg_is_resized_once_and_shared_by_both_formats():
    big = np.asarray(Image.fromarray(pattern(3, 1, (60, 50))).resize((300, 250), Image.BILINEAR))
    enc = encode_bytes(jpeg(big), OPTS)
    assert (enc.width, enc.height) == (64, 53)  # FFCV's floor(ratio * side)
    assert not enc.passthrough and enc.dali_same_as_ffcv and enc.dali_bytes() == enc.ffcv_data
    reference = cv2.resize(big, (64, 53), interpolation=cv2.INTER_AREA)
    assert close(pixels(enc.dali_bytes()), reference)


def test_draft_decode_of_much_larger_images_matches_a_full_decode():
    big = np.asarray(Image.fromarray(pattern(5, 3, (60, 50))).resize((1200, 1000), Image.BICUBIC))
    enc = encode_bytes(jpeg(big), EncodeOptions(max_resolution=100))
    assert (enc.width, enc.height) == (100, 83)
    assert close(pixels(enc.ffcv_data), cv2.resize(big, (100, 83), interpolation=cv2.INTER_AREA), tol=3)


def test_cmyk_jpeg_becomes_rgb():
    rgb = pattern(2, 7, (40, 30))
    src = jpeg(Image.fromarray(rgb).convert("CMYK"))
    assert Image.open(io.BytesIO(src)).mode == "CMYK"
    enc = encode_bytes(src, OPTS)
    assert not enc.passthrough
    assert close(pixels(enc.dali_bytes()), rgb, tol=6)
    assert close(ffcv_pixels(enc), rgb, tol=6)


def test_grayscale_jpeg_becomes_three_equal_channels():
    gray = pattern(4, 1, (40, 30))[..., 1]
    src = jpeg(Image.fromarray(gray, mode="L"))
    enc = encode_bytes(src, OPTS)
    assert not enc.passthrough
    out = ffcv_pixels(enc)
    assert out.shape == (30, 40, 3) and np.array_equal(out[..., 0], out[..., 2])
    assert close(out[..., 0], gray)
    assert Image.open(io.BytesIO(enc.dali_bytes())).mode == "RGB"


@pytest.mark.parametrize("mode", ["RGBA", "P", "RGB", "LA"])
def test_png_behind_a_jpeg_name_becomes_rgb_jpeg(mode):
    rgb = pattern(6, 2, (40, 30))
    im = Image.fromarray(rgb)
    im = im.convert(mode) if mode != "P" else im.quantize(64)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    enc = encode_bytes(buf.getvalue(), OPTS)
    assert not enc.passthrough and enc.dali_bytes()[:3] == b"\xff\xd8\xff"
    assert close(pixels(enc.dali_bytes()), np.asarray(im.convert("RGB")), tol=6)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    stored = pattern(7, 3, (40, 24))
    stored[:6, :10] = [255, 0, 0]  # a red corner makes every flip and rotation visible
    exif = Image.Exif()
    exif[0x0112] = orientation
    src = jpeg(stored, exif=exif.tobytes())
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(src))).convert("RGB"))
    enc = encode_bytes(src, OPTS)
    assert enc.passthrough == (orientation == 1)
    assert (enc.height, enc.width) == upright.shape[:2]
    assert close(ffcv_pixels(enc), upright, tol=5)
    dali = Image.open(io.BytesIO(enc.dali_bytes()))
    if orientation != 1:  # re-encoded upright, without an orientation tag left to apply twice
        assert dali.getexif().get(0x0112, 1) == 1
    assert close(np.asarray(dali.convert("RGB")), upright, tol=5)


def test_tiny_images_are_raw_for_ffcv_and_png_for_dali():
    arr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    enc = encode_array(arr, EncodeOptions(max_resolution=512, jpeg_quality=90))
    assert enc.ffcv_mode == FFCV_RAW and np.array_equal(ffcv_pixels(enc), arr)  # exact
    assert enc.dali_ext == DALI_PNG and image_problem(enc.dali_bytes()) is None
    dali = Image.open(io.BytesIO(enc.dali_bytes()))
    assert dali.format == "PNG" and dali.mode == "RGB"
    assert np.array_equal(np.asarray(dali), arr)  # lossless
    only_dali = encode_array(arr, EncodeOptions(ffcv=False))
    assert only_dali.dali_bytes() == enc.dali_bytes() and only_dali.ffcv_data is None
    tiny_jpeg = jpeg(arr)  # a tiny JPEG file passes through unchanged: it is the source
    assert encode_bytes(tiny_jpeg, EncodeOptions()).dali_bytes() == tiny_jpeg


def test_arrays_larger_than_raw_limit_are_jpeg():
    enc = encode_array(pattern(1, 1, (80, 60)), EncodeOptions(max_resolution=512, raw_max_pixels=64 * 64))
    assert enc.ffcv_mode == FFCV_JPG and enc.dali_same_as_ffcv and enc.dali_ext == DALI_JPG
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        encode_array(np.zeros((4, 4), np.uint8), OPTS)


@pytest.mark.parametrize("ffcv", [True, False])
def test_truncated_and_garbage_bytes_raise(ffcv):
    src = jpeg(pattern(1, 1, (60, 50)))
    opts = EncodeOptions(64, 90, ffcv=ffcv, dali=True, raw_max_pixels=0)
    with pytest.raises(OSError, match="(?i)truncated"):
        encode_bytes(src[: len(src) // 2], opts)
    with pytest.raises(Exception, match="cannot identify"):
        encode_bytes(b"definitely not an image", opts)


def test_16_bit_grayscale_png_keeps_its_range():
    ramp = (np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I;16")
    out = ffcv_pixels(encode_bytes(buf.getvalue(), OPTS))
    assert close(out[..., 0], (ramp >> 8).astype(np.uint8), tol=2)  # not clipped to white
