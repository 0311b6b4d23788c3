"""Every random draw of a training loader is a function of (seed, rank, epoch, batch): the same config and
seed give the same batches in any run, and an epoch's batches do not depend on the epochs drawn before it
(what makes a resume exact), on both backends, with the recipes' crops, flips, AutoAugment and Cutout on; the
host-side draws the DALI backend feeds its pipeline keep the distributions of the operators they replace."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import DataConfig, dali_draws, make_loader


def _epochs(root, backend, epochs, *, seed=3):
    """{epoch: view-major image batches} of one loader drawing `epochs` in that order (a resumed run's loader
    starts at the epoch it stopped in). View 0: the demo's padded crop + flip; view 1: a contrastive random
    resized crop + flip; both through AutoAugment (view 0) or jitter (view 1) and Cutout on the device."""
    cfg = DataConfig(
        dir=str(root),
        train="train",
        backend=backend,
        resolution=32,
        batch_size=32,
        num_workers=2,
        crop="padded",
        crop_padding=4,
        view_crop_scale=[0.2, 1.0],
        hflip=True,
        auto_augment="cifar10",
        cutout=8,
    )
    with make_loader(cfg, "train", views=2, seed=seed) as loader:
        out = {}
        for epoch in epochs:
            loader.set_epoch(epoch)
            out[epoch] = [images.clone() for images, _ in loader]
        return out


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("backend", ["ffcv", "dali"])
def test_batches_are_a_function_of_seed_and_epoch(demo_converted, backend):
    straight = _epochs(demo_converted, backend, [0, 1])
    resumed = _epochs(demo_converted, backend, [1, 0])  # a second run, starting where a resume starts
    assert _same(resumed[1], straight[1])  # epoch 1 without epoch 0 before it: what a resume draws
    assert _same(resumed[0], straight[0])  # epoch 0 after epoch 1: nothing carries over from epoch to epoch
    assert not _same(straight[0], straight[1])  # and the epochs draw anew
    # Each view draws its own: the padded view 0 and the contrastive view 1 are not copies of one crop.
    n = straight[0][0].shape[0] // 2
    assert not torch.equal(straight[0][0][:n], straight[0][0][n:])


def test_another_seed_draws_other_crops(demo_converted):
    a = _epochs(demo_converted, "dali", [0], seed=3)[0][0]
    b = _epochs(demo_converted, "dali", [0], seed=4)[0][0]
    assert not torch.equal(a, b)


def test_image_size_reads_the_header(tmp_path):
    for size, fmt in (((40, 32), "JPEG"), ((17, 300), "JPEG"), ((33, 21), "PNG")):
        buf = io.BytesIO()
        Image.new("RGB", size, (10, 20, 30)).save(
            buf, format=fmt, **({"progressive": True} if size[0] == 17 else {})
        )
        data = np.frombuffer(buf.getvalue(), np.uint8)
        assert dali_draws.image_size(data) == (size[1], size[0]), fmt


def test_resized_crop_windows_follow_random_resized_crop():
    rng = np.random.default_rng(0)
    n = 20000
    heights = rng.integers(20, 400, n)
    widths = rng.integers(20, 400, n)
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    anchor, shape = dali_draws.resized_crop_windows(rng, heights, widths, scale, ratio)
    assert anchor.dtype == shape.dtype == np.float32 and anchor.shape == shape.shape == (n, 2)
    assert (anchor >= 0).all() and (shape > 0).all() and (anchor + shape <= 1 + 1e-6).all()
    pixels = np.stack([widths, heights], axis=1) * shape  # w, h of each window in pixels
    assert np.allclose(pixels, np.round(pixels), atol=1e-2)  # whole pixels, at whole-pixel positions
    assert np.allclose(
        anchor * np.stack([widths, heights], axis=1),
        np.round(anchor * np.stack([widths, heights], axis=1)),
        atol=1e-2,
    )
    # the distribution of torchvision's RandomResizedCrop, on an image where some draws do not fit
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    h, w, m = 240, 320, 8000
    ref = np.array(
        [RandomResizedCrop.get_params(torch.empty(1, h, w), scale, ratio) for _ in range(m)], float
    )
    anchor, shape = dali_draws.resized_crop_windows(rng, np.full(m, h), np.full(m, w), scale, ratio)
    ours = np.concatenate([anchor[:, ::-1] * [h, w], shape[:, ::-1] * [h, w]], axis=1)  # i, j, h, w
    for column in range(4):
        assert ours[:, column].mean() == pytest.approx(ref[:, column].mean(), rel=0.04), column
        assert ours[:, column].std() == pytest.approx(ref[:, column].std(), rel=0.06), column
    # a window that never fits (ratio far from the image's): the whole image, ratio clamped, centred
    anchor, shape = dali_draws.resized_crop_windows(
        rng, np.array([100]), np.array([400]), (1.0, 1.0), (1.0, 1.0)
    )
    np.testing.assert_allclose(shape[0], [0.25, 1.0])
    np.testing.assert_allclose(anchor[0], [0.375, 0.0])


def test_padded_offsets_and_coins_are_uniform():
    rng = np.random.default_rng(1)
    x, y = dali_draws.padded_offsets(rng, 9000, 4)
    k = np.round(x * 8).astype(int)
    assert np.allclose(x * 8, k) and set(np.unique(k)) == set(range(9))
    assert np.bincount(k, minlength=9).min() > 800 and not np.array_equal(x, y)
    flips = dali_draws.coins(rng, 10000)
    assert flips.dtype == np.int32 and set(np.unique(flips)) == {0, 1} and abs(flips.mean() - 0.5) < 0.03
