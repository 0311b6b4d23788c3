"""Policy tables and magnitude spaces shared by every augmentation backend.

Op names follow torchvision's `transforms.v2.AutoAugment` / `RandAugment` (and timm's RandAugment for the
`timm` style). The AutoAugment tables are the 25 two-op sub-policies of the paper, as torchvision ships
them: `(op, probability, magnitude bin)`, with bin None for ops that take no magnitude. The functions
after the tables map a policy's magnitude (a bin index, or timm's 0..10 level) to the kernels' one argument
per sample; the comment before them says what that argument means for each op.
"""

from __future__ import annotations

import numpy as np
import torch

OPS: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "AutoContrast",
    "Equalize",
    "Invert",
)
OP_ID: dict[str, int] = {name: i for i, name in enumerate(OPS)}

POLICIES: tuple[str, ...] = ("imagenet", "cifar10", "cifar10_dbm", "randaugment")
RANDAUGMENT_STYLES: tuple[str, ...] = ("torchvision", "timm")

SubPolicy = tuple[tuple[str, float, int | None], tuple[str, float, int | None]]

AUTOAUGMENT_POLICIES: dict[str, tuple[SubPolicy, ...]] = {
    "imagenet": (
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
        (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ),
    "cifar10": (
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
        (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
        (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
        (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
        (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
        (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
        (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
        (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
        (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
        (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
        (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
        (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
        (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ),
}

# The released DBM CIFAR runs (dbm_ltr cifar/aug/autoaug.py, DeepVoltaire's PIL port) use the same 25
# sub-policies with PIL's kernels and their own magnitude tables (`pil_magnitudes`).
AUTOAUGMENT_POLICIES["cifar10_dbm"] = AUTOAUGMENT_POLICIES["cifar10"]

# Which kernels run each AutoAugment policy: torchvision's tensor ops, or PIL's arithmetic.
AUTOAUGMENT_KERNELS: dict[str, str] = {
    "imagenet": "torchvision",
    "cifar10": "torchvision",
    "cifar10_dbm": "pil",
}

AUTOAUGMENT_BINS = 10

# torchvision's RandAugment op set (Identity included, Invert and SolarizeAdd not).
TORCHVISION_RANDAUGMENT_OPS: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
# timm's `rand-*` op set (the 15 `_RAND_TRANSFORMS`); TranslateX/Y are timm's TranslateX/YRel here.
TIMM_RANDAUGMENT_OPS: tuple[str, ...] = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)
TIMM_LEVEL_MAX = 10.0  # timm's _LEVEL_DENOM: magnitudes live on 0..10


# Every batched kernel receives one physical argument per sample (`arg`):
#
#     ShearX/ShearY        shear factor (the tangent: x_in = x + arg * y, about the top-left corner)
#     TranslateX/Y         shift in pixels
#     Rotate               degrees, counter-clockwise
#     Brightness, Color, Contrast, Sharpness    enhancement factor minus one (0 = identity; torchvision's
#                          signed magnitude, kept as such because its blends weigh the degenerate image by -m)
#     Posterize            bits kept (0..8)
#     Solarize             threshold in 0..256 units (pixels >= arg are inverted)
#     SolarizeAdd          amount added to pixels below 128
#     Identity, AutoContrast, Equalize, Invert  (ignored)
#
# The functions below map a policy's magnitude (a bin index, or timm's 0..10 level) to that argument. The
# "cifar10_dbm" policy runs PIL's kernels (`geometric.pil_affine_ops`, `pil_colour`), whose arguments differ
# for the geometric ops: ShearX/Y is PIL's coefficient (x_in = x + arg * y, sampled bicubically),
# TranslateX/Y a fractional shift in pixels (input = output + arg), Rotate degrees counter-clockwise about
# the centre (nearest), all three in PIL's conventions.


# Ops whose torchvision magnitude gets a random sign.
TORCHVISION_SIGNED = frozenset(
    {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}
)


def torchvision_magnitudes(num_bins: int, height: int, width: int, device=None) -> dict[str, torch.Tensor]:
    """torchvision's magnitude space: op -> float32 value per bin. Ops that take no magnitude are absent.

    The grids come from the same float32 `torch.linspace` calls as torchvision's, so a bin picks exactly the
    value torchvision would; they are built on `device` (no host-to-device copy inside a captured step).
    """

    def lin(start: float, end: float) -> torch.Tensor:
        return torch.linspace(start, end, num_bins, device=device)

    return {
        "ShearX": lin(0.0, 0.3),
        "ShearY": lin(0.0, 0.3),
        "TranslateX": lin(0.0, 150.0 / 331.0 * width),
        "TranslateY": lin(0.0, 150.0 / 331.0 * height),
        "Rotate": lin(0.0, 30.0),
        "Brightness": lin(0.0, 0.9),
        "Color": lin(0.0, 0.9),
        "Contrast": lin(0.0, 0.9),
        "Sharpness": lin(0.0, 0.9),
        "Posterize": (8 - (torch.arange(num_bins, device=device) / ((num_bins - 1) / 4))).round(),
        "Solarize": lin(1.0, 0.0),
    }


def magnitude_table(num_bins: int, height: int, width: int, device) -> torch.Tensor:
    """torchvision's magnitude grids as one (len(OPS) x bins) float32 table on `device`; zero rows for ops
    without a magnitude."""
    space = torchvision_magnitudes(num_bins, height, width, device)
    zeros = torch.zeros(num_bins, device=device)
    return torch.stack([space.get(name, zeros) for name in OPS])


def signed_mask(signed: frozenset[str] = TORCHVISION_SIGNED) -> torch.Tensor:
    """Whether each op of OPS gets a random sign (torchvision's set by default), as a bool tensor."""
    return torch.tensor([name in signed for name in OPS])


# The release's SubPolicy: a random sign on shear, translate and the four enhance ops; Rotate is unsigned
# (always counter-clockwise), as are Posterize and Solarize.
PIL_SIGNED = frozenset(
    {"ShearX", "ShearY", "TranslateX", "TranslateY", "Brightness", "Color", "Contrast", "Sharpness"}
)


def pil_magnitudes(num_bins: int = AUTOAUGMENT_BINS) -> torch.Tensor:
    """The release's `ranges` (np.linspace, float64, so a bin picks exactly its value) as one
    (len(OPS) x bins) float64 table; zero rows for ops without a magnitude. Translate is a fraction of the
    image size (150 / 331 at the top bin), multiplied by the size when drawn (`pil_arg`); Solarize's
    thresholds run from 256 down to 0; Posterize keeps round(linspace(8, 4)) bits."""
    space = {
        "ShearX": np.linspace(0, 0.3, num_bins),
        "ShearY": np.linspace(0, 0.3, num_bins),
        "TranslateX": np.linspace(0, 150 / 331, num_bins),
        "TranslateY": np.linspace(0, 150 / 331, num_bins),
        "Rotate": np.linspace(0, 30, num_bins),
        "Color": np.linspace(0.0, 0.9, num_bins),
        "Posterize": np.round(np.linspace(8, 4, num_bins), 0).astype(np.int32),
        "Solarize": np.linspace(256, 0, num_bins),
        "Contrast": np.linspace(0.0, 0.9, num_bins),
        "Sharpness": np.linspace(0.0, 0.9, num_bins),
        "Brightness": np.linspace(0.0, 0.9, num_bins),
    }
    zeros = np.zeros(num_bins)
    return torch.tensor(np.stack([space.get(name, zeros).astype(np.float64) for name in OPS]))


def pil_arg(name: str, value: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The release's (signed) magnitude -> the PIL kernel argument: translate in pixels (`magnitude * size`,
    fractional), the enhance ops' factor minus one, everything else as is."""
    if name == "TranslateX":
        return value * width
    if name == "TranslateY":
        return value * height
    return value


def torchvision_arg(name: str, value: torch.Tensor) -> torch.Tensor:
    """torchvision's (signed) magnitude -> the kernel argument, as `_apply_image_or_video_transform` does."""
    if name in ("TranslateX", "TranslateY", "Posterize"):
        return value.trunc()  # torchvision's int(magnitude)
    if name == "Solarize":
        return 255.0 * value
    return value


def timm_arg(name: str, level: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, bool]:
    """timm's `LEVEL_TO_ARG` for a level on 0..10 -> (kernel argument, signed)."""
    frac = level / TIMM_LEVEL_MAX
    if name == "Rotate":
        return frac * 30.0, True
    if name in ("ShearX", "ShearY"):
        return frac * 0.3, True
    if name == "TranslateX":
        return frac * 0.45 * width, True
    if name == "TranslateY":
        return frac * 0.45 * height, True
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return frac * 1.8 - 0.9, False  # factor 0.1 .. 1.9, unsigned
    if name == "Posterize":
        return (frac * 4.0).trunc(), False
    if name == "Solarize":
        return (frac * 256.0).trunc(), False
    if name == "SolarizeAdd":
        return (frac * 110.0).trunc(), False
    return torch.zeros_like(level), False
