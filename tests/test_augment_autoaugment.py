"""The released DBM CIFAR AutoAugment ("cifar10_dbm": dbm_ltr cifar/aug/autoaug.py, a PIL policy), batched:
op by op and as a whole policy against a PIL reference written here from the release's formulas.

Tolerance: none. Every op, bicubic shear included, equals PIL to the bit on these CPU inputs: the batched
kernels repeat PIL's arithmetic (double-precision positions and cubic weights, 16.16 fixed-point rotation,
float32 blends with truncation, integer grey levels). Under torch.compile, fused multiply-adds may move a
rare pixel by one level (checked at the end)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from pipelines.augment import BatchAutoAugment, build_batch_augment
from pipelines.augment.autoaugment import pil_apply_ops
from pipelines.augment.policies import AUTOAUGMENT_POLICIES, OP_ID, OPS, PIL_SIGNED, pil_arg, pil_magnitudes

FILL = (128, 128, 128)
TABLE = pil_magnitudes()
ENHANCE = {"Brightness", "Color", "Contrast", "Sharpness"}


def reference(img: Image.Image, name: str, m: float) -> Image.Image:
    """One op of the release's SubPolicy with signed magnitude `m` (its `func` table, sign already drawn)."""
    if name == "ShearX":
        return img.transform(img.size, Image.AFFINE, (1, m, 0, 0, 1, 0), Image.BICUBIC, fillcolor=FILL)
    if name == "ShearY":
        return img.transform(img.size, Image.AFFINE, (1, 0, 0, m, 1, 0), Image.BICUBIC, fillcolor=FILL)
    if name == "TranslateX":
        return img.transform(img.size, Image.AFFINE, (1, 0, m * img.size[0], 0, 1, 0), fillcolor=FILL)
    if name == "TranslateY":
        return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, m * img.size[1]), fillcolor=FILL)
    if name == "Rotate":  # rotate_with_fill: RGBA rotate, composited on grey 128
        rot = img.convert("RGBA").rotate(m)
        return Image.composite(rot, Image.new("RGBA", rot.size, (128,) * 4), rot).convert(img.mode)
    if name in ENHANCE:
        return getattr(ImageEnhance, name)(img).enhance(1 + m)
    if name == "Posterize":
        return ImageOps.posterize(img, int(m))
    if name == "Solarize":
        return ImageOps.solarize(img, m)
    if name in ("AutoContrast", "Equalize", "Invert"):
        return getattr(ImageOps, name.lower())(img)
    assert name == "Identity"
    return img


def to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def from_pil(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def images(n: int = 24, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (n // 2, 3, size, size), dtype=torch.uint8, generator=g)
    smooth = torch.nn.functional.avg_pool2d(noise.float(), 5, 1, 2)  # natural-ish: correlated pixels
    smooth = (smooth - smooth.amin()) / (smooth.amax() - smooth.amin()) * 180 + 40
    x = torch.cat([noise, smooth.to(torch.uint8)])
    x[0] = 77  # flat: AutoContrast / Equalize keep it
    return x


def run_op(x: torch.Tensor, name: str, m: float) -> torch.Tensor:
    n, _, h, w = x.shape
    value = torch.full((n,), m, dtype=torch.float64)
    arg = pil_arg(name, value, h, w)
    return pil_apply_ops(
        x, torch.full((n,), OP_ID[name]), arg, {name}, torch.tensor(FILL, dtype=torch.float32)
    )


def test_magnitude_tables_are_the_releases():
    row = {name: TABLE[OP_ID[name]] for name in OPS}
    assert row["Rotate"][2].item() == 30 * 2 / 9 == 6.666666666666667
    assert row["TranslateX"][9].item() == 150 / 331 and row["TranslateY"][3].item() == pytest.approx(50 / 331)
    assert row["ShearY"][8].item() == pytest.approx(0.3 * 8 / 9)
    assert row["Solarize"].tolist() == pytest.approx([256 - 256 * k / 9 for k in range(10)])
    assert row["Posterize"].tolist() == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    assert row["Brightness"][6].item() == pytest.approx(0.6)
    assert AUTOAUGMENT_POLICIES["cifar10_dbm"] == AUTOAUGMENT_POLICIES["cifar10"]  # the same 25 sub-policies


OP_CASES = (
    [
        (name, k, sign)
        for name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", *sorted(ENHANCE))
        for k in (1, 3, 6, 9)
        for sign in ((1, -1) if name in PIL_SIGNED else (1,))
    ]
    + [("Posterize", k, 1) for k in (0, 3, 7, 9)]
    + [("Solarize", k, 1) for k in (0, 2, 3, 5, 8, 9)]
)
OP_CASES += [(name, 0, 1) for name in ("AutoContrast", "Equalize", "Invert")]


@pytest.mark.parametrize("name, k, sign", OP_CASES)
def test_each_op_equals_pil(name, k, sign):
    x = images()
    m = float(TABLE[OP_ID[name], k]) * sign
    expected = torch.stack([from_pil(reference(to_pil(img), name, m)) for img in x])
    out = run_op(x, name, m)
    assert torch.equal(out, expected), int((out != expected).sum())
    if name in ("ShearX", "Rotate", "TranslateY"):  # the channels_last layout gives the same pixels
        assert torch.equal(run_op(x.contiguous(memory_format=torch.channels_last), name, m), expected)


def test_hand_worked_translate_rounds_and_rotate_is_counter_clockwise():
    # A ramp: pixel (y, x) holds 7 * x. Bin 3 of 32 px: 150/331 * 32 / 3 = 4.834 px. PIL samples input
    # floor(x + 0.5 + 4.834) = x + 5 (torchvision's policy truncates the shift to 4), the rest is fill.
    ramp = (torch.arange(32) * 7).to(torch.uint8).view(1, 1, 1, 32).expand(1, 3, 32, 32).contiguous()
    m = float(TABLE[OP_ID["TranslateX"], 3])
    assert m * 32 == pytest.approx(4.8338, abs=1e-4)
    right = run_op(ramp, "TranslateX", m)[0, 0, 0]
    assert right[:27].tolist() == [7 * (x + 5) for x in range(27)] and right[27:].tolist() == [128] * 5
    left = run_op(ramp, "TranslateX", -m)[0, 0, 0]
    assert left[:5].tolist() == [128] * 5 and left[5:].tolist() == [7 * (x - 5) for x in range(5, 32)]
    # Rotate by 90 degrees (not in the table, but the kernel takes any angle): counter-clockwise, so the
    # top row becomes the left column, read bottom-up.
    square = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).expand(1, 3, 4, 4).contiguous()
    turned = pil_apply_ops(
        square, torch.tensor([OP_ID["Rotate"]]), torch.tensor([90.0]), {"Rotate"}, torch.tensor([128.0] * 3)
    )
    assert turned[0, 0].tolist() == [[3, 7, 11, 15], [2, 6, 10, 14], [1, 5, 9, 13], [0, 4, 8, 12]]


def test_draws_follow_the_release():
    aug = BatchAutoAugment("cifar10_dbm")
    p = aug.draw(4000, 32, 32, torch.Generator().manual_seed(0))
    op, arg = p["op"], p["arg"]
    rotate = arg[op == OP_ID["Rotate"]]
    assert rotate.numel() > 50 and torch.all(rotate == 30 * 2 / 9)  # unsigned: always counter-clockwise
    translate = arg[(op == OP_ID["TranslateX"]) | (op == OP_ID["TranslateY"])]
    levels = {round(abs(v) / (150 / 331 * 32) * 9) for v in translate.tolist()}
    assert levels == {3, 8, 9} and (translate < 0).any() and (translate > 0).any()
    assert not torch.all(translate == translate.round())  # fractional shifts, not whole pixels
    solarize = sorted(set(arg[op == OP_ID["Solarize"]].tolist()))  # thresholds on 256, not 255
    assert solarize == pytest.approx(sorted(256 - 256 * k / 9 for k in (2, 3, 5, 8)))
    shear = arg[op == OP_ID["ShearY"]]
    assert sorted(set(shear.abs().tolist())) == pytest.approx([0.3 * 7 / 9, 0.3 * 8 / 9])
    assert (shear < 0).any() and (shear > 0).any()


def test_whole_policy_equals_a_pil_replay_of_the_drawn_sub_policies():
    x = images(48)
    aug = BatchAutoAugment("cifar10_dbm", fill=FILL)
    p = aug.draw(x.shape[0], 32, 32, torch.Generator().manual_seed(3))
    out = aug.apply(x, p)
    sizes = {"TranslateX": 32, "TranslateY": 32}
    for i in range(x.shape[0]):
        img = to_pil(x[i])
        for j in range(2):
            name, arg = OPS[int(p["op"][i, j])], float(p["arg"][i, j])
            img = reference(img, name, arg / sizes.get(name, 1))  # the reference takes the translate fraction
        assert torch.equal(out[i], from_pil(img)), i
    assert not torch.equal(out, x)


@pytest.mark.slow
def test_compiles_fullgraph_and_matches_eager():
    aug = build_batch_augment(auto_augment="cifar10_dbm", cutout=8)
    x = images(32).contiguous(memory_format=torch.channels_last)
    p = aug.stages[0].draw(x.shape[0], 32, 32, torch.Generator().manual_seed(4))
    eager = aug.stages[0].apply(x, p)
    compiled = torch.compile(aug.stages[0].apply, fullgraph=True)(x, p)
    diff = (eager.int() - compiled.int()).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.999
    assert math.isfinite(float(diff.float().mean()))
