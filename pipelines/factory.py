"""`make_loader`: batches from an FFCV `.beton` or a DALI `.dali` shard folder, with one contract.

    loader = make_loader(cfg, "train", views=1, rank=r, world_size=w, device="cuda:0", seed=0)
    for epoch in range(start, epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:   # uint8 [N,3,H,W] channels_last, int64 [N], on the device
            ...

Backends (`backends.BACKENDS`) share samplers, rank sharding and augmentations: same shapes in any format.
"""

from __future__ import annotations

import math

import torch

from .backends import BACKENDS
from .config import DataConfig, Split, check_choice
from .foreign import dataset_meta
from .loader import VIEW_RECIPES, Loader, LoaderSpec
from .samplers import check_rank


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
    view_recipe: str = "contrastive",
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> Loader:
    """A loader over `cfg.path(split)` with `cfg.backend` for process `rank` of `world_size` (no process
    group needed); `seed` fixes every epoch's order (`loader.set_epoch(e)`).

    Training: RandomResizedCrop to `resolution`, or with `crop="padded"` the centre square resized and
    RandomCrop(resolution, padding=`crop_padding`, zero fill) as in the CIFAR recipes; flip; then
    `auto_augment` and `cutout` batched on the device. `epoch_samples` from `sampler`, in `world_size` equal
    slices: every rank gets `len(loader)` full batches. `views` > 1 gives [views*N, 3, H, W], view-major:
    "contrastive" views are BCL's (RandomResizedCrop(`view_crop_scale`) + flip + colour jitter 0.4/0.4/0.4/0.1
    w.p. 0.8 + grayscale w.p. 0.2, + Gaussian blur w.p. 0.5 under 64 px as in the papers' CIFAR recipe);
    "classification" views are view 0's recipe with their own draws, plus `view_grayscale` and `view_blur`.
    Evaluation: centre crop of `eval_crop_ratio` resized to `eval_resolution`; each rank reads its
    contiguous share in file order, every sample exactly once across ranks, the last batch partial.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if int(views) != views or views < 1:
        raise ValueError(f"views must be a positive integer, got {views!r}")
    check_choice("view_recipe", view_recipe, VIEW_RECIPES)
    check_rank(rank, world_size)
    if split == "train" and views > 1 and view_recipe != "classification":
        for key in ("view_grayscale", "view_blur"):
            if getattr(cfg, key):
                raise ValueError(
                    f"data.{key}: only the 'classification' view recipe (GML) takes it; this loss's views "
                    f"follow {view_recipe!r}, which has its own grayscale and blur"
                )
    path = cfg.path(split)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset file or folder (data.backend={cfg.backend!r})")
    train = split == "train"
    meta, index_dir = dataset_meta(cfg, path, split)  # its meta file, or counted from its labels (foreign)
    spec = LoaderSpec(
        cfg,
        split,
        path,
        batch_size=_batch_per_rank(cfg, split, world_size),
        device=_device(device),
        rank=int(rank),
        world_size=int(world_size),
        seed=int(seed),
        views=int(views) if train else 1,
        view_recipe=view_recipe,
        index_dir=index_dir,
    )
    augment = view_augment = None
    if train:
        from .augment import build_batch_augment

        augment = build_batch_augment(cfg)
        if spec.views > 1 and view_recipe == "classification":
            # view 0's stages (+ grayscale / blur): their draws for views 1.. follow view 0's, independent
            view_augment = build_batch_augment(cfg, extra_view=True)
        elif spec.views > 1:
            from .augment.views import contrastive_view_augment

            view_augment = contrastive_view_augment(blur=spec.resolution < 64)
    return Loader(BACKENDS[cfg.backend](spec, meta), spec, augment=augment, view_augment=view_augment)
