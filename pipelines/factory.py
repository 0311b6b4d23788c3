"""`make_loader`: batches from an FFCV `.beton` or a DALI `.dali` shard folder, with one contract.

    loader = make_loader(cfg, "train", views=1, rank=r, world_size=w, device="cuda:0", seed=0)
    for epoch in range(start, epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:   # uint8 [N,3,H,W] channels_last, int64 [N], on the device
            ...

`cfg` is the whole `[data]` config (`pipelines.DataConfig`); backends come from a registry (`BACKENDS`); both
share the samplers, the rank sharding and the batched device-side augmentations, so a run gives the same
shapes and statistics whichever format it reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .config import SUFFIXES, DataConfig, Split
from .dali_backend import DaliBackend
from .ffcv_backend import FfcvBackend
from .foreign import dataset_meta
from .loader import Backend, Loader, LoaderSpec
from .meta import DatasetMeta
from .samplers import check_rank

BACKENDS: dict[str, Callable[[LoaderSpec, DatasetMeta], Backend]] = {
    "ffcv": FfcvBackend,
    "dali": DaliBackend,
}
assert BACKENDS.keys() == SUFFIXES.keys(), "every backend needs its file suffix in pipelines.config"


def _device(device: torch.device | str) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {d} requested but CUDA is not available")
    if d.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:k], got {d}")
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d


def _batch_per_rank(cfg: DataConfig, split: Split, world_size: int) -> int:
    """`data.batch_size` is global: a training batch splits evenly over the processes (a fixed shape on every
    rank); an evaluation batch is rounded up (any size will do: its last batch is partial anyway)."""
    if split == "train":
        if cfg.batch_size % world_size:
            raise ValueError(
                f"data.batch_size={cfg.batch_size} must be divisible by the number of processes "
                f"({world_size})"
            )
        return cfg.batch_size // world_size
    return math.ceil((cfg.eval_batch_size or cfg.batch_size) / world_size)


def make_loader(
    cfg: DataConfig,
    split: Split,
    *,
    views: int = 1,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> Loader:
    """A loader over `cfg.path(split)` with `cfg.backend` for process `rank` of `world_size`.

    Training (`split="train"`): RandomResizedCrop(`crop_scale`, `crop_ratio`) to `resolution`, or with
    `crop="padded"` the centre square resized to `resolution` and RandomCrop(resolution,
    padding=`crop_padding`, zero fill) as in the CIFAR recipes; then horizontal flip (`hflip`), then
    `auto_augment` and `cutout` batched on the device. Samples come from `sampler`, `epoch_samples` per
    epoch (0: the dataset size), split into `world_size` equal slices: every rank gets `len(loader)` full
    batches. `views` > 1 adds views, images then being [views*N, 3, H, W], view-major; with `view_recipe`
    "contrastive" they are BCL's (RandomResizedCrop(`view_crop_scale`) + flip + colour jitter 0.4/0.4/0.4/0.1
    w.p. 0.8 + grayscale w.p. 0.2, + Gaussian blur w.p. 0.5 under 64 px as in the papers' CIFAR recipe),
    with "classification" each is cropped, flipped and augmented as view 0, with its own draws (GML).

    Evaluation (`split="eval"`): centre crop of `eval_crop_ratio` of the shorter side resized to
    `eval_resolution`; each rank reads its contiguous share of the data in file order, every sample exactly
    once across ranks, the last batch partial. Augmentation, sampler and views apply to training only.

    `rank`/`world_size` shard the data without a process group; `seed` fixes every epoch's order
    (`loader.set_epoch(e)`).
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if int(views) != views or views < 1:
        raise ValueError(f"views must be a positive integer, got {views!r}")
    check_rank(rank, world_size)
    path = cfg.path(split)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset file or folder (data.backend={cfg.backend!r})")
    train = split == "train"
    meta, index_dir = dataset_meta(cfg, path, split)  # its meta file, or counted from its labels (foreign)
    spec = LoaderSpec(
        path=path,
        train=train,
        batch_size=_batch_per_rank(cfg, split, world_size),
        resolution=cfg.resolution if train else (cfg.eval_resolution or cfg.resolution),
        device=_device(device),
        num_workers=cfg.num_workers,
        hflip=cfg.hflip,
        rank=int(rank),
        world_size=int(world_size),
        seed=int(seed),
        sampler=cfg.sampler if train else "uniform",
        num_samples=(cfg.epoch_samples or None) if train else None,
        views=int(views) if train else 1,
        scale=tuple(cfg.crop_scale),
        ratio=tuple(cfg.crop_ratio),
        view_scale=tuple(cfg.view_crop_scale or cfg.crop_scale),
        center_crop_ratio=cfg.eval_crop_ratio,
        crop=cfg.crop if train else "resized",
        crop_padding=cfg.crop_padding,
        skip_corrupt=cfg.skip_corrupt,
        drop_last=cfg.drop_last,
        image_field=cfg.image_field,
        label_field=cfg.label_field,
        index_dir=index_dir,
        view_recipe=cfg.view_recipe,
    )
    augment = view_augment = None
    if train:
        from .augment import build_batch_augment

        augment = build_batch_augment(
            cfg.auto_augment or None,
            cfg.cutout,
            randaugment_n=cfg.randaugment_n,
            randaugment_m=cfg.randaugment_m,
            magnitude_std=cfg.magnitude_std,
            fill=tuple(cfg.augment_fill),
            randaugment_style=cfg.randaugment_style,
            jitter=tuple(cfg.jitter),
        )
        if spec.views > 1 and cfg.view_recipe == "classification":
            view_augment = augment  # the same module: its draws for views 1.. follow view 0's, independent
        elif spec.views > 1:
            from .augment.views import contrastive_view_augment

            view_augment = contrastive_view_augment(blur=spec.resolution < 64)
    backend = BACKENDS[cfg.backend](spec, meta)
    return Loader(backend, backend.meta, spec, augment=augment, view_augment=view_augment)
