"""`view_recipe="classification"` (GML's cls, q, k views, declared by the loss): every extra view is cropped,
flipped and augmented as view 0, with its own draws, on both backends; `data.view_grayscale` reaches views 1..
only."""

from __future__ import annotations

import pytest
import torch

import losses
from pipelines import DataConfig, make_loader
from pipelines.augment import Cutout, RandomGrayscale

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # numba, as there

RES, PAD, N = 24, 4, 16


def _loader(root, backend, **kw):
    cfg = DataConfig(
        backend=backend,
        dir=str(root),
        resolution=RES,
        batch_size=N,
        num_workers=2,
        crop="padded",
        crop_padding=PAD,
        hflip=False,
        **kw,
    )
    return make_loader(cfg, "train", views=3, view_recipe="classification", seed=2)


def _shift_between(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int] | None:
    """The (dy, dx) with b[y, x] = a[y + dy, x + dx] wherever both show the image (padding is 0 in all
    three channels), or None: two padded random crops of one image differ by such an integer shift."""
    a, b = a.int(), b.int()
    for dy in range(-2 * PAD, 2 * PAD + 1):
        for dx in range(-2 * PAD, 2 * PAD + 1):
            ya, yb = slice(max(dy, 0), RES + min(dy, 0)), slice(max(-dy, 0), RES + min(-dy, 0))
            xa, xb = slice(max(dx, 0), RES + min(dx, 0)), slice(max(-dx, 0), RES + min(-dx, 0))
            pa, pb = a[:, ya, xa], b[:, yb, xb]
            both = (pa.sum(0) > 0) & (pb.sum(0) > 0)
            # a sixth of the image: what two crops 2 * PAD apart in both directions still share, each less
            # a Cutout square
            if both.sum() >= RES * RES // 6 and ((pa - pb).abs().amax(0)[both] <= 2).all():
                return dy, dx
    return None


@pytest.mark.parametrize("backend", ["ffcv", "dali"])
def test_extra_views_are_cropped_and_augmented_like_view0(backend, demo_converted):
    """One loader per backend (an FFCV loader costs a numba compile per view): padded crops and Cutout."""
    with _loader(demo_converted, backend, cutout=8) as loader:
        # View 0's stages on every view (here Cutout; no contrastive colour recipe).
        assert [type(s) for s in loader.augment.stages] == [Cutout]
        assert [type(s) for s in loader.view_augment.stages] == [Cutout]
        images, labels = next(iter(loader))
    assert images.shape == (3 * N, 3, RES, RES) and labels.shape == (N,)
    views = images.view(3, N, 3, RES, RES)
    shifts = []
    for i in range(N):
        for v in (1, 2):
            shift = _shift_between(views[0, i], views[v, i])  # Cutout's zeros are left out like padding
            assert shift is not None, f"sample {i}: view {v} is no padded crop of view 0's image"
            shifts.append(shift)
    assert len(set(shifts)) > 4  # each view draws its own offsets
    # Cutout's 8x8 zero square, drawn per view: interior black pixels (the padding only reaches 4 px in).
    inner = views[:, :, :, PAD:-PAD, PAD:-PAD].sum(2) == 0  # [3, N, 16, 16]
    assert (inner.flatten(2).sum(2) > 0).float().mean(1).min() > 0.5  # in most samples of every view
    assert not torch.equal(inner[1], inner[2]) and not torch.equal(inner[0], inner[1])


def test_view_grayscale_reaches_the_extra_views_only(demo_converted):
    """`data.view_grayscale` (GML's q and k): with p = 1 views 1.. are grey, view 0 keeps its colours."""
    with _loader(demo_converted, "dali", view_grayscale=1.0) as loader:
        assert [type(s) for s in loader.view_augment.stages] == [RandomGrayscale]
        assert loader.augment is None
        images, _ = next(iter(loader))
    views = images.view(3, N, 3, RES, RES).int()
    grey = ((views[:, :, 0] == views[:, :, 1]) & (views[:, :, 1] == views[:, :, 2])).flatten(2).all(2)
    assert grey[1:].all() and not grey[0].any()


def test_the_view_recipe_is_checked(tmp_path):
    with pytest.raises(ValueError, match="view_recipe: unknown value 'cls'; valid: 'contrastive'"):
        make_loader(DataConfig(dir=str(tmp_path)), "train", views=3, view_recipe="cls")  # before any file


def test_the_loss_declares_its_view_recipe():
    assert (
        losses.loss_class("dbm_gml").view_recipe == losses.loss_class("gml").view_recipe == "classification"
    )
    for name in ("bcl", "dbm_bcl", "ce"):  # BCL's recipe stays the default
        assert losses.loss_class(name).view_recipe == "contrastive"
