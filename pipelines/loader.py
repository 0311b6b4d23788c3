"""The object `make_loader` returns: one backend's raw batches, plus what both backends share.

A backend (FFCV or DALI) decodes, crops, flips and hands over uint8 views on the device; this wrapper owns
the epoch counter, the batched device-side augmentations (AutoAugment/RandAugment/Cutout on view 0, the
contrastive recipe on the extra views) and the view-major stacking, so both backends behave the same.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from .augment.ops import generator_as_default
from .meta import DatasetMeta
from .samplers import EpochOrder

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class LoaderSpec:
    """Everything a backend needs to build its pipeline, resolved for one split and one rank by `make_loader`
    from the data config (per-rank batch size, the split's resolution, the training-only options)."""

    path: Path
    train: bool
    batch_size: int
    resolution: int
    device: torch.device
    num_workers: int
    hflip: bool
    rank: int
    world_size: int
    seed: int
    sampler: str
    num_samples: int | None
    views: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    view_scale: tuple[float, float]
    center_crop_ratio: float
    crop: str = "resized"  # training crop of view 0: "resized" (RandomResizedCrop) or "padded"
    crop_padding: int = 4
    skip_corrupt: bool = False  # dali: leave out samples whose JPEG bytes are damaged (training only)
    drop_last: bool = True  # training: drop the last partial batch (evaluation always keeps it)
    image_field: str = "image"  # ffcv: the .beton's fields
    label_field: str = "label"
    index_dir: Path | None = None  # dali: where the shards' index files are (None: beside each shard)

    view_recipe: str = "contrastive"  # pipelines.config.VIEW_RECIPES

    @property
    def drops_last(self) -> bool:
        """Whether this loader's last partial batch is dropped: training's default, never evaluation."""
        return self.train and self.drop_last

    def crops_like_view0(self, view: int) -> bool:
        """Whether training view `view` is cropped and flipped as view 0 (else: the contrastive crop)."""
        return view == 0 or self.view_recipe == "classification"

    def epoch_order(self, labels: np.ndarray) -> EpochOrder:
        """The sample order both backends follow: the sampler's rank slice, or the exact evaluation share."""
        return EpochOrder(
            labels,
            train=self.train,
            sampler=self.sampler,
            num_samples=self.num_samples,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
        )

    @property
    def threads(self) -> int:
        """Decoding threads: `num_workers`, at most the CPUs this process may run on (cgroup and taskset
        limits included, which `os.cpu_count()` ignores)."""
        return max(1, min(self.num_workers, len(os.sched_getaffinity(0))))


class Backend(Protocol):
    """What a backend provides. `epoch(e)` yields (views, labels): `views` a list of uint8
    N x 3 x H x W channels_last tensors (one per view), `labels` int64 [N], all on the spec's device.
    `meta` describes the samples it serves (the file's meta, less any sample it left out)."""

    num_batches: int
    meta: DatasetMeta
    order: EpochOrder  # this rank's samples per epoch, in order

    def epoch(self, epoch: int) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]: ...

    def close(self) -> None: ...


def _compiled(module: nn.Module | None):
    return None if module is None else torch.compile(module, fullgraph=True, dynamic=False)


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (seed, rank, epoch, stream): distinct tuples give unrelated seeds."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class Loader:
    """Iterate for (images, labels); `len()` is batches per epoch on this rank; `set_epoch(e)` picks the
    epoch the next iteration draws (a resumed run calls it with the epoch it stopped in).

    Images are uint8 [N, 3, H, W] in channels_last memory (`views=3`: [3N, ...], view-major), labels int64
    [N], both on `device`. Labels are the caller's to keep; images without a batched augmentation are views
    of the libraries' recycled output buffers, valid only until a few more batches have been drawn: consume or
    copy them before moving on (a captured step copies into its static input anyway).
    """

    def __init__(
        self,
        backend: Backend,
        meta: DatasetMeta,
        spec: LoaderSpec,
        *,
        augment: nn.Module | None = None,
        view_augment: nn.Module | None = None,
    ):
        self.backend = backend
        self.meta = meta
        self.spec = spec
        self.augment = augment.to(spec.device) if augment is not None else None
        self.view_augment = view_augment.to(spec.device) if view_augment is not None else None
        # On a GPU the augmentations run compiled (a few fused kernels instead of hundreds of eager launches
        # on the main thread per batch); they draw from the epoch's generator lent as the default one, so
        # the draws, and a resumed run's, are the same as eager. Training batches have one shape (two with
        # drop_last off): a compile each.
        self._compiled = spec.device.type == "cuda"
        self._augment_fn = _compiled(self.augment) if self._compiled else self.augment
        self._view_augment_fn = _compiled(self.view_augment) if self._compiled else self.view_augment
        self._epoch = 0
        self._closed = False

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will draw."""
        return self._epoch

    @property
    def batch_size(self) -> int:
        return self.spec.batch_size

    def __len__(self) -> int:
        return self.backend.num_batches

    def synthetic_batches(self, num_classes: int) -> list[Batch]:
        """Batches of every shape this loader yields in training (the full one, and the short last one when
        `drop_last` is off), with its dtype, layout and device but made-up content: what the step compiles
        and captures on before the loader's threads start (`TrainStep.prepare`)."""
        s = self.spec
        rows = [s.batch_size]
        short = len(self.backend.order) % s.batch_size  # samples this rank draws per epoch
        if not s.drops_last and short:
            rows.append(short)
        g = torch.Generator().manual_seed(0)
        out = []
        for n in rows:
            images = torch.randint(
                0, 256, (s.views * n, 3, s.resolution, s.resolution), dtype=torch.uint8, generator=g
            )
            labels = torch.arange(n) % num_classes
            out.append(
                (images.to(s.device).contiguous(memory_format=torch.channels_last), labels.to(s.device))
            )
        return out

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch = int(epoch)

    def _generator(self, epoch: int) -> torch.Generator:
        g = torch.Generator(device=self.spec.device)
        g.manual_seed(derive_seed(self.spec.seed, self.spec.rank, epoch, 0xA06))
        return g

    def __iter__(self) -> Iterator[Batch]:
        if self._closed:
            raise RuntimeError(f"loader over {self.spec.path} was closed")
        epoch = self._epoch
        self._epoch += 1
        return self._run(epoch)

    def _run(self, epoch: int) -> Iterator[Batch]:
        augmented = self.augment is not None or self.view_augment is not None
        g = self._generator(epoch) if augmented else None
        for views, labels in self.backend.epoch(epoch):
            # Labels are tiny: hand out our own copy, so keeping them (metrics) never sees a recycled buffer.
            labels = labels.clone()
            first = self._apply(self._augment_fn, views[0], g)
            if len(views) == 1:
                yield first, labels
                continue
            rest = self._apply(self._view_augment_fn, torch.cat(views[1:]), g)
            yield torch.cat([first, rest]), labels

    def _apply(self, fn, images: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        if fn is None:
            return images
        if not self._compiled:
            return fn(images, generator=g)
        with generator_as_default(g):  # a compiled module cannot take a Generator argument
            return fn(images)

    def close(self) -> None:
        """Stop the backend's threads and release its files; the loader cannot be iterated afterwards."""
        if not self._closed:
            self._closed = True
            self.backend.close()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"Loader({type(self.backend).__name__}, {s.path.name}, train={s.train}, "
            f"batch_size={s.batch_size}, resolution={s.resolution}, rank={s.rank}/{s.world_size}, "
            f"batches={len(self)})"
        )
