"""Every batched AutoAugment / RandAugment op against torchvision's own op on the same image and magnitude."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms.v2 import InterpolationMode

from pipelines.augment import BatchAutoAugment, BatchRandAugment, apply_ops
from pipelines.augment.policies import (
    OP_ID,
    TORCHVISION_RANDAUGMENT_OPS,
    TORCHVISION_SIGNED,
    torchvision_arg,
    torchvision_magnitudes,
)

FILL = [128.0, 100.0, 50.0]
NEAREST = InterpolationMode.NEAREST
AUTOAUGMENT_OPS = ("Identity", *sorted(set(TORCHVISION_RANDAUGMENT_OPS) - {"Identity"}), "Invert")


def reference(img: torch.Tensor, name: str, arg: float, fill=FILL) -> torch.Tensor:
    """torchvision's op for one C x H x W image, called as `AutoAugment._apply_image_or_video_transform`
    calls it, from our kernel argument (see `pipelines.augment.policies`)."""
    if name == "ShearX":
        shear = [math.degrees(math.atan(arg)), 0.0]
        return TF.affine(img, 0.0, [0, 0], 1.0, shear, interpolation=NEAREST, fill=fill, center=[0, 0])
    if name == "ShearY":
        shear = [0.0, math.degrees(math.atan(arg))]
        return TF.affine(img, 0.0, [0, 0], 1.0, shear, interpolation=NEAREST, fill=fill, center=[0, 0])
    if name == "TranslateX":
        return TF.affine(img, 0.0, [int(arg), 0], 1.0, [0.0, 0.0], interpolation=NEAREST, fill=fill)
    if name == "TranslateY":
        return TF.affine(img, 0.0, [0, int(arg)], 1.0, [0.0, 0.0], interpolation=NEAREST, fill=fill)
    if name == "Rotate":
        return TF.rotate(img, arg, interpolation=NEAREST, fill=fill)
    enhance = {
        "Brightness": TF.adjust_brightness,
        "Color": TF.adjust_saturation,
        "Contrast": TF.adjust_contrast,
        "Sharpness": TF.adjust_sharpness,
    }
    if name in enhance:
        return enhance[name](img, 1.0 + arg)
    if name == "Posterize":
        return TF.posterize(img, int(arg))
    if name == "Solarize":
        return TF.solarize(img, arg)
    unary = {
        "AutoContrast": TF.autocontrast,
        "Equalize": TF.equalize,
        "Invert": TF.invert,
        "Identity": lambda i: i,
    }
    return unary[name](img)


def images(n: int = 5, h: int = 17, w: int = 23, seed: int = 0) -> torch.Tensor:
    """Smooth random images with noise (so histograms and contrast are realistic), odd non-square size,
    one flat channel and one constant image (the degenerate cases of autocontrast and equalize)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 5, generator=g) * 255
    x = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    x = (x + torch.randn(n, 3, h, w, generator=g) * 20).clamp(0, 255).to(torch.uint8)
    x[0, 1] = 77
    x[1] = 200
    return x


def run_op(x: torch.Tensor, name: str, arg: float) -> torch.Tensor:
    n = x.shape[0]
    op = torch.full((n,), OP_ID[name])
    return apply_ops(x, op, torch.full((n,), arg), {name}, torch.tensor(FILL))


def args_for(name: str, num_bins: int, h: int, w: int) -> list[float]:
    """Every signed magnitude of torchvision's grid for `name`, as kernel arguments."""
    values = torchvision_magnitudes(num_bins, h, w).get(name)
    if values is None:
        return [0.0]
    signs = (1.0, -1.0) if name in TORCHVISION_SIGNED else (1.0,)
    return [float(torchvision_arg(name, s * v)) for v in values for s in signs]


@pytest.mark.parametrize("name", AUTOAUGMENT_OPS)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_op_matches_torchvision_at_every_autoaugment_magnitude(name, layout):
    x = images().contiguous(memory_format=layout)
    for arg in args_for(name, 10, *x.shape[-2:]):
        ref = torch.stack([reference(img, name, arg) for img in x])
        out = run_op(x, name, arg)
        diff = (out.int() - ref.int()).abs()
        # equal up to interpolation rounding; in practice bit-exact on CPU
        assert diff.max() <= 1, (name, arg)
        assert (diff == 0).float().mean() >= 0.99, (name, arg)


@pytest.mark.parametrize(
    "name", ["ShearX", "TranslateY", "Rotate", "Contrast", "Sharpness", "Posterize", "Solarize"]
)
def test_op_matches_torchvision_on_randaugment_bins(name):
    x = images(n=3, h=20, w=20, seed=1)
    for arg in args_for(name, 31, 20, 20)[::7]:
        ref = torch.stack([reference(img, name, arg) for img in x])
        assert (run_op(x, name, arg).int() - ref.int()).abs().max() <= 1, (name, arg)


@pytest.mark.parametrize(
    "name", sorted(set(AUTOAUGMENT_OPS) - {"AutoContrast", "Equalize", "Invert", "Solarize"})
)
def test_magnitude_zero_is_identity(name):
    x = images()
    zero = args_for(name, 10, *x.shape[-2:])[0]  # bin 0, positive sign
    assert torch.equal(run_op(x, name, zero), x)


def test_timm_only_ops():
    x = images()
    # SolarizeAdd: add to pixels below 128, saturating (timm's lookup table)
    v = x.int()
    assert torch.equal(run_op(x, "SolarizeAdd", 40.0).int(), torch.where(v < 128, (v + 40).clamp(max=255), v))
    # Solarize at timm's level 10 (threshold 256) and Posterize with 8 bits are identities; 0 bits is black
    assert torch.equal(run_op(x, "Solarize", 256.0), x)
    assert torch.equal(run_op(x, "Posterize", 8.0), x)
    assert not run_op(x, "Posterize", 0.0).any()


def test_each_sample_gets_its_own_op_and_argument():
    x = images(n=6)
    names = ["Rotate", "Equalize", "Color", "Posterize", "TranslateX", "Identity"]
    args = [-20.0, 0.0, 0.5, 5.0, 4.0, 0.0]
    op = torch.tensor([OP_ID[n] for n in names])
    out = apply_ops(x, op, torch.tensor(args), set(names), torch.tensor(FILL))
    for i, (name, arg) in enumerate(zip(names, args, strict=True)):
        assert torch.equal(out[i], reference(x[i], name, arg)), name


@pytest.mark.parametrize(
    "module",
    [
        BatchAutoAugment("imagenet", fill=FILL),
        BatchAutoAugment("cifar10", fill=FILL),
        BatchRandAugment(2, 15, magnitude_std=3.0, fill=FILL),
    ],
    ids=["aa-imagenet", "aa-cifar10", "randaugment"],
)
def test_whole_policy_matches_torchvision_applied_with_the_drawn_parameters(module):
    x = images(n=64, h=16, w=16, seed=2)
    out = module(x, generator=torch.Generator().manual_seed(3))
    p = module.draw(64, 16, 16, torch.Generator().manual_seed(3))  # the same draws
    for i in range(64):
        ref = x[i]
        for j in range(p["op"].shape[1]):
            ref = reference(ref, OP_ID_NAMES[int(p["op"][i, j])], float(p["arg"][i, j]))
        assert (out[i].int() - ref.int()).abs().max() <= 1, i


OP_ID_NAMES = {i: n for n, i in OP_ID.items()}


@pytest.mark.gpu
def test_cuda_matches_cpu():
    x = images(n=4, h=32, w=32).repeat(16, 1, 1, 1)
    names = sorted(AUTOAUGMENT_OPS)
    pairs = [(name, arg) for name in names for arg in args_for(name, 10, 32, 32)[::3]]
    pairs = [pairs[i % len(pairs)] for i in range(x.shape[0])]
    op = torch.tensor([OP_ID[name] for name, _ in pairs])
    arg = torch.tensor([a for _, a in pairs])
    cpu = apply_ops(x, op, arg, set(names), torch.tensor(FILL))
    gpu = apply_ops(x.cuda(), op.cuda(), arg.cuda(), set(names), torch.tensor(FILL).cuda()).cpu()
    diff = (cpu.int() - gpu.int()).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.999
