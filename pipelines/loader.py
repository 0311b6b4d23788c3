"""The object `make_loader` returns: one backend's raw batches, plus what every backend shares.

A backend (`Backend`, registered in `pipelines.backends`) decodes, crops, flips and hands over uint8 views
on the device; this wrapper checks the backend's labels against the meta once, builds the epoch order both
follow, and owns the epoch counter, the batched device-side augmentations and the view-major stacking.
Invariant: every backend reads the same `LoaderSpec` and the same `EpochOrder`, so the batches' shapes,
order and statistics do not depend on the format.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from .augment.ops import generator_as_default
from .config import DataConfig, Split
from .meta import DatasetMeta
from .samplers import EpochOrder

Batch = tuple[torch.Tensor, torch.Tensor]
# What the extra training views (views 1.. of a multi-view loss) get; the loss declares it (`view_recipe`).
# "contrastive": BCL's recipe, RandomResizedCrop(data.view_crop_scale) + flip + colour jitter / grayscale
# (/ blur); "classification": view 0's own crop, flip, jitter and AutoAugment / RandAugment + Cutout, drawn
# independently per view, with `data.view_grayscale` / `data.view_blur` before the policy (GML's cls, q, k).
VIEW_RECIPES = ("contrastive", "classification")


@dataclass(frozen=True)
class LoaderSpec:
    """What a backend builds its pipeline from: the whole `[data]` config, read by its own key names
    (`spec.cfg.crop_scale`), plus the values of one split and one rank; properties resolve the options
    that depend on the split."""

    cfg: DataConfig
    split: Split
    path: Path
    batch_size: int  # per rank
    device: torch.device
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    views: int = 1  # training only
    view_recipe: str = "contrastive"  # one of VIEW_RECIPES
    index_dir: Path | None = None  # dali: where the shards' index files are (None: beside each shard)

    @property
    def train(self) -> bool:
        return self.split == "train"

    @property
    def resolution(self) -> int:
        return self.cfg.resolution if self.train else (self.cfg.eval_resolution or self.cfg.resolution)

    @property
    def sampler(self) -> str:
        return self.cfg.sampler if self.train else "uniform"

    @property
    def num_samples(self) -> int | None:
        """Samples per epoch: `data.epoch_samples` in training (0: the dataset size, None here)."""
        return (self.cfg.epoch_samples or None) if self.train else None

    @property
    def crop(self) -> str:
        """View 0's training crop (`data.crop`); evaluation's centre crop counts as "resized"."""
        return self.cfg.crop if self.train else "resized"

    @property
    def view_crop_scale(self) -> tuple[float, ...]:
        """The contrastive views' crop area range: `data.view_crop_scale`, empty: `data.crop_scale`."""
        return tuple(self.cfg.view_crop_scale or self.cfg.crop_scale)

    @property
    def drops_last(self) -> bool:
        """Whether this loader's last partial batch is dropped: training's default, never evaluation."""
        return self.train and self.cfg.drop_last

    def crops_like_view0(self, view: int) -> bool:
        """Whether training view `view` is cropped and flipped as view 0 (else: the contrastive crop)."""
        return view == 0 or self.view_recipe == "classification"

    @property
    def threads(self) -> int:
        """Decoding threads: `data.num_workers`, at most the CPUs this process may run on (cgroup and
        taskset limits included, which `os.cpu_count()` ignores)."""
        return min(self.cfg.num_workers, len(os.sched_getaffinity(0)))

    def epoch_order(self, labels: np.ndarray) -> EpochOrder:
        """The sample order every backend follows: the sampler's rank slice, or the exact evaluation share."""
        return EpochOrder(
            labels,
            train=self.train,
            sampler=self.sampler,
            num_samples=self.num_samples,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
        )


class Backend(Protocol):
    """A data format and its decoding pipeline; `pipelines.backends.BACKENDS` registers one per format.

    Class side, the format (used before any loader is built, and for data fastlt did not convert):
    `suffix` of a split's file or folder (`<stem><suffix>`); `checks_samples`: whether it can leave the
    damaged samples its open-time check finds out (what `data.skip_corrupt` needs); `accepts(path)`:
    whether `path` as named is this format's; `check_path(path)`: refuse what cannot be (one line naming
    the file);
    `index_dir(path, cache)`: a cache folder of the index files such data lacks, or None; `read_labels(path,
    cfg, index_dir)`: every sample's label in file order; `format_entry(path, cfg, index_dir)`: its
    `formats` entry in a meta.

    Instance side, `Backend(spec, meta)` opens the data: `labels` (what it serves, in file order) and `meta`
    (less any sample it left out), which `Loader` checks against each other; then `start(order,
    num_batches)` builds the pipeline for this rank's `EpochOrder`; `epoch(e)` yields (views, labels):
    `views` a list of uint8 N x 3 x H x W channels_last tensors (one per view), `labels` int64 [N], on the
    spec's device; `close()` stops its threads and releases its files.
    """

    suffix: ClassVar[str]
    checks_samples: ClassVar[bool]
    labels: np.ndarray
    meta: DatasetMeta

    @classmethod
    def accepts(cls, path: Path) -> bool: ...

    @classmethod
    def check_path(cls, path: Path) -> None: ...

    @classmethod
    def index_dir(cls, path: Path, cache: Path) -> Path | None: ...

    @classmethod
    def read_labels(cls, path: Path, cfg: DataConfig, index_dir: Path | None) -> np.ndarray: ...

    @classmethod
    def format_entry(cls, path: Path, cfg: DataConfig, index_dir: Path | None) -> dict[str, Any]: ...

    def start(self, order: EpochOrder, num_batches: int) -> None: ...

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
    of the libraries' recycled output buffers, valid while `MAX_LEAD` more batches are drawn (the host lead
    the training and evaluation loops keep to, `pipelines.config`): consume or copy them by then (a captured
    step copies into its static input anyway).
    """

    def __init__(
        self,
        backend: Backend,
        spec: LoaderSpec,
        *,
        augment: nn.Module | None = None,
        view_augment: nn.Module | None = None,
    ):
        try:
            backend.meta.check_labels(backend.labels, spec.path)
            self.order = spec.epoch_order(backend.labels)  # this rank's samples per epoch, in order
            self.num_batches = self.order.num_batches(spec.batch_size, spec.drops_last)
            backend.start(self.order, self.num_batches)
        except BaseException:
            backend.close()
            raise
        self.backend = backend
        self.meta = backend.meta  # what the losses and metrics count: without any sample left out
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
        return self.num_batches

    def synthetic_batches(self, num_classes: int) -> list[Batch]:
        """Batches of every shape this loader yields in training (the full one, and the short last one when
        `drop_last` is off), with its dtype, layout and device but made-up content: what the step compiles
        and captures on before the loader's threads start (`TrainStep.prepare`)."""
        s = self.spec
        rows = [s.batch_size]
        short = len(self.order) % s.batch_size  # samples this rank draws per epoch
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
