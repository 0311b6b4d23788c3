"""`make_loader`: batches from an FFCV `.beton` or a DALI `.dali` shard folder, with one contract.

    loader = make_loader("ffcv", "data/x/train.beton", train=True, batch_size=256, resolution=224,
                         device="cuda:0", num_workers=8, auto_augment="randaugment", rank=r, world_size=w)
    for epoch in range(start, epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:   # uint8 [N,3,H,W] channels_last, int64 [N], on the device
            ...

Backends come from a registry (`BACKENDS`); both share the samplers, the rank sharding and the batched
device-side augmentations, so a run gives the same shapes and statistics whichever format it reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .dali_backend import DaliBackend
from .ffcv_backend import FfcvBackend
from .loader import Backend, Loader, LoaderSpec
from .meta import DatasetMeta, read_meta
from .samplers import SAMPLERS, check_rank

BACKENDS: dict[str, Callable[[LoaderSpec, DatasetMeta], Backend]] = {
    "ffcv": FfcvBackend,
    "dali": DaliBackend,
}

IMAGENET_CROP_RATIO = 224 / 256
CROPS = ("resized", "padded")


def _device(device: torch.device | str) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {d} requested but CUDA is not available")
    if d.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:k], got {d}")
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d


def _range(name: str, value, lo: float, hi: float) -> tuple[float, float]:
    a, b = (float(v) for v in value)
    if not lo <= a <= b <= hi:
        raise ValueError(f"{name} must be (low, high) with {lo} <= low <= high <= {hi}, got {value}")
    return a, b


def make_loader(
    backend: str,
    path: str | os.PathLike,
    *,
    train: bool,
    batch_size: int,
    resolution: int,
    device: torch.device | str,
    num_workers: int,
    hflip: bool = True,
    auto_augment: str | None = None,
    cutout: int = 0,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    sampler: str = "uniform",
    num_samples: int | None = None,
    randaugment_n: int = 2,
    randaugment_m: float = 9.0,
    views: int = 1,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    view_scale: tuple[float, float] | None = None,
    view_blur: bool | None = None,
    center_crop_ratio: float = IMAGENET_CROP_RATIO,
    crop: str = "resized",
    crop_padding: int = 4,
    augment_options: Mapping[str, Any] | None = None,
) -> Loader:
    """Build a loader over `path` with `backend` ("ffcv": a `.beton`; "dali": a `.dali` shard folder).

    Training (`train=True`): RandomResizedCrop(`scale`, `ratio`) to `resolution` (`crop="resized"`), or
    with `crop="padded"` the centre square resized to `resolution` and RandomCrop(resolution,
    padding=`crop_padding`, zero fill) as in the CIFAR recipes; then horizontal flip (`hflip`), then
    `auto_augment` ("imagenet", "cifar10", "randaugment" with `randaugment_n`/`randaugment_m`) and
    `cutout` (square side in pixels, 0 = off) batched on the device; `augment_options` go to
    `pipelines.augment.build_batch_augment` (e.g. `magnitude_std`, `fill`). Samples come from `sampler`
    ("uniform", "class_balanced", "sqrt"; see `pipelines.samplers`), `num_samples` per epoch (default: the
    dataset size), split into `world_size` equal slices: every rank gets `len(loader)` full batches.
    `views` > 1 adds contrastive views (RandomResizedCrop(`view_scale`, default `scale`) + flip + colour
    jitter 0.4/0.4/0.4/0.1 w.p. 0.8 + grayscale w.p. 0.2, + Gaussian blur w.p. 0.5 when `view_blur`, default:
    for images under 64 px as in the papers' CIFAR recipe): images are then [views*N, 3, H, W], view-major.

    Evaluation (`train=False`): centre crop of `center_crop_ratio` of the shorter side (224/256; 1.0 keeps the
    whole square of small images) resized to `resolution`; each rank reads its contiguous share of the data in
    file order, every sample exactly once across ranks, the last batch partial. The augmentation, sampler and
    view arguments apply to training only and are ignored.

    `rank`/`world_size` shard the data without a process group; `seed` fixes every epoch's order
    (`loader.set_epoch(e)`); `num_workers` is FFCV's / DALI's thread count.
    """
    try:
        backend_cls = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown loader backend {backend!r}; choose from {sorted(BACKENDS)}") from None
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset file or folder (backend {backend!r})")
    for name, value in (("batch_size", batch_size), ("resolution", resolution), ("num_workers", num_workers)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    check_rank(rank, world_size)
    if train:
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose from {sorted(SAMPLERS)}")
        if int(views) != views or views < 1:
            raise ValueError(f"views must be a positive integer, got {views!r}")
        if crop not in CROPS:
            raise ValueError(f"unknown crop {crop!r}; choose from {list(CROPS)}")
        if crop == "padded" and not 1 <= crop_padding <= resolution:
            raise ValueError(f"crop_padding must be in 1..resolution ({resolution}), got {crop_padding}")
        if cutout < 0 or cutout > resolution:
            raise ValueError(f"cutout must be in 0..resolution ({resolution}), got {cutout}")
    if not 0 < center_crop_ratio <= 1:
        raise ValueError(f"center_crop_ratio must be in (0, 1], got {center_crop_ratio}")
    scale = _range("scale", scale, 0.0, 1.0)
    ratio = _range("ratio", ratio, 1e-3, 1e3)
    view_scale = scale if view_scale is None else _range("view_scale", view_scale, 0.0, 1.0)
    spec = LoaderSpec(
        path=path,
        train=bool(train),
        batch_size=int(batch_size),
        resolution=int(resolution),
        device=_device(device),
        num_workers=int(num_workers),
        hflip=bool(hflip),
        rank=int(rank),
        world_size=int(world_size),
        seed=int(seed),
        sampler=sampler if train else "uniform",
        num_samples=num_samples if train else None,
        views=int(views) if train else 1,
        scale=scale,
        ratio=ratio,
        view_scale=view_scale,
        center_crop_ratio=float(center_crop_ratio),
        crop=crop if train else "resized",
        crop_padding=int(crop_padding),
    )
    augment = view_augment = None
    if train:
        from .augment import build_batch_augment

        augment = build_batch_augment(
            auto_augment,
            cutout,
            randaugment_n=randaugment_n,
            randaugment_m=randaugment_m,
            **dict(augment_options or {}),
        )
        if spec.views > 1:
            from .augment_views import contrastive_view_augment

            blur = spec.resolution < 64 if view_blur is None else bool(view_blur)
            view_augment = contrastive_view_augment(blur=blur)
    meta = read_meta(path)
    return Loader(backend_cls(spec, meta), meta, spec, augment=augment, view_augment=view_augment)
