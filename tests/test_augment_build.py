"""`build_batch_augment` (pipelines/augment/build.py): its ColorJitter stage on view 0, and views 1.. of the
"classification" view recipe (`extra_view=True`, GML's q and k): view 0's jitter, then RandomGrayscale
(`data.view_grayscale`) and GaussianBlur (`data.view_blur`), then the policy. Per sample, for the same drawn
parameters: torchvision's `ColorJitter` and `rgb_to_grayscale` to the bit, then the blur's own kernel (within
one grey level of torchvision's, as tests/test_augment_jitter.py)."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from pipelines import DataConfig, make_loader
from pipelines.augment import (
    BatchRandAugment,
    ColorJitter,
    Cutout,
    GaussianBlur,
    RandomGrayscale,
    build_batch_augment,
)
from pipelines.augment.jitter import color_jitter, gaussian_blur

# dbm_ltr large_scale/main.py: RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.0)], p=1.0)
RELEASED = (0.4, 0.4, 0.4, 0.0)
GML_VIEWS = dict(jitter=RELEASED, view_grayscale=0.2, view_blur=0.5)  # GML's "randclsstack"


def images(n: int = 96, size: int = 20) -> torch.Tensor:
    x = torch.randint(
        0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    x[0] = 77  # a flat grey image
    x[1, :, :, : size // 2] = 255  # saturated half
    return x


def test_equals_torchvision_color_jitter_per_sample_for_the_drawn_factors():
    x = images(64)
    jitter = ColorJitter(*RELEASED, p=1.0)
    params = jitter.draw(x.shape[0], x.device, torch.Generator().manual_seed(3))
    factors, order = params["factors"], params["order"]
    assert params["apply"].all()  # p = 1: every image
    assert ((factors[:, :3] >= 0.6) & (factors[:, :3] <= 1.4)).all() and (factors[:, 3] == 0).all()
    out = color_jitter(x, factors, order, params["apply"], jitter.active)
    reference = T.ColorJitter(*RELEASED)
    for i in range(x.shape[0]):
        b, c, s, _ = (float(v) for v in factors[i])
        tv_params = dict(
            fn_idx=order[i], brightness_factor=b, contrast_factor=c, saturation_factor=s, hue_factor=None
        )
        assert torch.equal(out[i], reference.transform(x[i], tv_params)), i
    # the forward draws the same parameters from the same generator
    assert torch.equal(jitter(x, generator=torch.Generator().manual_seed(3)), out)


def test_build_puts_the_jitter_before_the_policy():
    x = images(64)
    aug = build_batch_augment(
        auto_augment="randaugment",
        jitter=RELEASED,
        randaugment_style="timm",
        randaugment_m=10.0,
        magnitude_std=0.5,
    )
    first, second = aug.stages
    assert isinstance(first, ColorJitter) and first.p == 1.0 and isinstance(second, BatchRandAugment)
    assert first.ranges == [(0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.0, 0.0)] and first.active[3] is False
    g, h = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(aug(x, generator=g), second(first(x, generator=h), generator=h))
    only = build_batch_augment(jitter=RELEASED)
    changed = (only(x, generator=torch.Generator().manual_seed(1)) != x).flatten(1).any(dim=1)
    assert changed[1:].all()  # every (non-flat) image is jittered
    assert len(build_batch_augment(auto_augment="cifar10").stages) == 1  # off by default
    assert build_batch_augment() is None


def test_bad_jitter():
    with pytest.raises(ValueError, match="brightness, contrast, saturation, hue"):
        build_batch_augment(jitter=(0.4, 0.4, 0.4))
    with pytest.raises(ValueError, match=r"data.jitter: .*hue <= 0.5\), got \(0.4, 0.4, 0.4, 0.7\)"):
        build_batch_augment(jitter=(0.4, 0.4, 0.4, 0.7))


def test_jitter_grayscale_blur_equal_torchvision_per_sample_for_the_drawn_parameters():
    x = images()
    n = x.shape[0]
    aug = build_batch_augment(extra_view=True, **GML_VIEWS)
    jitter, gray, blur = aug.stages
    assert isinstance(jitter, ColorJitter) and jitter.p == 1.0
    assert isinstance(gray, RandomGrayscale) and gray.p == 0.2
    assert isinstance(blur, GaussianBlur) and (blur.p, blur.sigma) == (0.5, (0.1, 2.0))
    g = torch.Generator().manual_seed(3)
    jp, gp, bp = jitter.draw(n, x.device, g), gray.draw(n, x.device, g), blur.draw(n, x.device, g)
    out = aug(x, generator=torch.Generator().manual_seed(3))  # the stages draw the same, in this order
    reference, k = T.ColorJitter(*RELEASED), blur.size_for(x)
    for i in range(n):
        b, c, s, _ = (float(v) for v in jp["factors"][i])
        tv_params = dict(
            fn_idx=jp["order"][i],
            brightness_factor=b,
            contrast_factor=c,
            saturation_factor=s,
            hue_factor=None,
        )
        ref = reference.transform(x[i], tv_params)
        if gp["apply"][i]:
            ref = TF.rgb_to_grayscale(ref, num_output_channels=3)
        if bp["apply"][i]:
            sigma = bp["sigma"][i]
            assert torch.equal(out[i], gaussian_blur(ref[None], sigma[None], k)[0]), i
            tv = TF.gaussian_blur(ref, [k, k], [float(sigma)] * 2)
            assert (out[i].int() - tv.int()).abs().max() <= 1, i
        else:
            assert torch.equal(out[i], ref), i
    grey, blurred = gp["apply"].float().mean(), bp["apply"].float().mean()
    assert 0.05 < grey < 0.4 and 0.3 < blurred < 0.7  # p 0.2 and 0.5 over 96 samples
    assert (~gp["apply"] & ~bp["apply"]).any()


def test_the_policy_and_cutout_follow_and_view_0_has_neither():
    x = images()
    cfg = DataConfig(
        auto_augment="randaugment", randaugment_style="timm", magnitude_std=0.5, cutout=8, **GML_VIEWS
    )
    extra, first = build_batch_augment(cfg, extra_view=True), build_batch_augment(cfg)
    kinds = [ColorJitter, RandomGrayscale, GaussianBlur, BatchRandAugment, Cutout]
    assert [type(s) for s in extra.stages] == kinds
    assert [type(s) for s in first.stages] == [ColorJitter, BatchRandAugment, Cutout]
    g, h = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    y = x
    for stage in extra.stages:
        y = stage(y, generator=h)
    assert torch.equal(extra(x, generator=g), y)
    # off by default: the extra views get view 0's stages
    plain = DataConfig(auto_augment="randaugment")
    assert [type(s) for s in build_batch_augment(plain, extra_view=True).stages] == [BatchRandAugment]
    assert build_batch_augment(extra_view=True) is None


def test_probabilities_are_checked_and_only_the_classification_recipe_takes_them(tmp_path):
    with pytest.raises(ValueError, match=r"data.view_grayscale: must be a probability in \[0, 1\], got 1.5"):
        DataConfig(view_grayscale=1.5)
    with pytest.raises(ValueError, match=r"data.view_blur: must be a probability in \[0, 1\], got -0.1"):
        DataConfig(view_blur=-0.1)
    cfg = DataConfig(dir=str(tmp_path), view_blur=0.5)
    with pytest.raises(ValueError, match=r"data.view_blur: only the 'classification' view recipe"):
        make_loader(cfg, "train", views=3)  # BCL's recipe: refused before any file is opened
    with pytest.raises(FileNotFoundError):  # accepted: the check passes, the data is missing
        make_loader(cfg, "train", views=3, view_recipe="classification")
