"""Epoch orders shared by both loaders: which samples an epoch visits, in which order, on which rank.

An order is a pure function of (labels, sampler, seed, epoch, epoch length): every rank draws the same
global stream from `numpy.random.default_rng((seed, epoch))` and keeps its own contiguous, equal-length
slice, so ranks are disjoint within an epoch (for `uniform`), all get the same number of batches (what DDP
and a captured step need), and a resumed run redraws exactly the epoch it stopped in.

    s = make_sampler("sqrt", labels, num_samples=None)
    order = s.rank_order(epoch=3, seed=0, rank=1, world_size=4)    # int64 sample indices
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class Sampler:
    """The global stream of an epoch (`order`) and each rank's slice of it (`rank_order`)."""

    name = "base"

    def __init__(self, labels: np.ndarray, num_samples: int | None = None):
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
        if len(labels) == 0:
            raise ValueError("cannot sample from an empty dataset")
        if labels.min() < 0:
            raise ValueError(f"labels must be non-negative class indices, got {int(labels.min())}")
        if num_samples is not None and int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1 (or None for the dataset size), got {num_samples}")
        self.labels = labels.astype(np.int64, copy=False)
        self.num_samples = len(labels) if num_samples is None else int(num_samples)

    def order(self, epoch: int, seed: int) -> np.ndarray:
        """Every rank's identical global stream for `epoch`: `num_samples` int64 indices."""
        return self._draw(np.random.default_rng((int(seed), int(epoch))))

    def per_rank(self, world_size: int) -> int:
        """Samples each rank draws per epoch (the same on every rank)."""
        return self.num_samples // world_size

    def rank_order(self, epoch: int, seed: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """This rank's slice of the epoch's global stream; the last `len(stream) % world_size` draws are
        left out on every rank."""
        check_rank(rank, world_size)
        per = self.per_rank(world_size)
        return self.order(epoch, seed)[rank * per : (rank + 1) * per]

    def class_probabilities(self) -> np.ndarray:
        """Probability that one draw lands in each class (for tests and reports)."""
        counts = np.bincount(self.labels).astype(np.float64)
        return counts / counts.sum()

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class UniformSampler(Sampler):
    """A permutation of all samples, each visited once (instance-balanced). `num_samples` below the dataset
    size takes the permutation's head (a fresh random subset each epoch); above it chains permutations, so
    every sample appears floor or ceil(n / N) times."""

    name = "uniform"

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        n = len(self.labels)
        reps = -(-self.num_samples // n)
        return np.concatenate([rng.permutation(n) for _ in range(reps)])[: self.num_samples]


class ClassPowerSampler(Sampler):
    """A class with probability proportional to n_c ** q, then one of its samples uniformly, with
    replacement: a tail sample repeats many times in an epoch and some head samples are never seen. The epoch
    length defaults to the dataset size (`num_samples` chooses it, e.g. `max(counts) * num_classes` for a
    classifier-balancing "epoch")."""

    power = 0.0

    def __init__(self, labels: np.ndarray, num_samples: int | None = None):
        super().__init__(labels, num_samples)
        counts = np.bincount(self.labels)
        self._by_class = np.argsort(self.labels, kind="stable")  # sample indices grouped by class
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._counts = counts
        weights = np.where(counts > 0, counts.astype(np.float64) ** self.power, 0.0)
        self._p = weights / weights.sum()

    def class_probabilities(self) -> np.ndarray:
        return self._p.copy()

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        classes = rng.choice(len(self._p), size=self.num_samples, p=self._p)
        within = (rng.random(self.num_samples) * self._counts[classes]).astype(np.int64)
        return self._by_class[self._starts[classes] + within].astype(np.int64)


class ClassBalancedSampler(ClassPowerSampler):
    """Every class equally frequent whatever its size (Kang et al.'s class-balanced sampling, q = 0)."""

    name = "class_balanced"
    power = 0.0


class SqrtSampler(ClassPowerSampler):
    """Square-root sampling (q = 1/2)."""

    name = "sqrt"
    power = 0.5


SAMPLERS: dict[str, Callable[..., Sampler]] = {
    cls.name: cls for cls in (UniformSampler, ClassBalancedSampler, SqrtSampler)
}


def make_sampler(name: str, labels: np.ndarray, num_samples: int | None = None) -> Sampler:
    """The sampler `name` (`SAMPLERS`) over `labels` (0..C-1; a class with no sample is never drawn)."""
    try:
        cls = SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}") from None
    return cls(labels, num_samples)


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def eval_slice(num_samples: int, rank: int, world_size: int) -> np.ndarray:
    """Rank `rank`'s contiguous share of 0..num_samples-1 for evaluation: the shares of all ranks partition
    the data exactly (sizes differ by at most one, no padding duplicates)."""
    check_rank(rank, world_size)
    return np.arange(num_samples * rank // world_size, num_samples * (rank + 1) // world_size, dtype=np.int64)


class EpochOrder:
    """The sample indices one rank visits in an epoch: the sampler's slice when training, the rank's
    contiguous share of the data (every sample exactly once across ranks, file order) when evaluating."""

    def __init__(
        self,
        labels: np.ndarray,
        *,
        train: bool,
        sampler: str = "uniform",
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        check_rank(rank, world_size)
        self.train, self.seed, self.rank, self.world_size = train, int(seed), rank, world_size
        self.sampler = make_sampler(sampler, labels, num_samples) if train else None
        self._eval = None if train else eval_slice(len(labels), rank, world_size)

    def __len__(self) -> int:
        return self.sampler.per_rank(self.world_size) if self.sampler is not None else len(self._eval)

    def __call__(self, epoch: int) -> np.ndarray:
        if self.sampler is None:
            return self._eval
        return self.sampler.rank_order(epoch, self.seed, self.rank, self.world_size)

    def num_batches(self, batch_size: int, drop_last: bool | None = None) -> int:
        """Training drops the last partial batch by default (static shapes); evaluation keeps it (every sample
        once), and so does training with `drop_last=False` (the official codes' DataLoaders keep it)."""
        drop = self.train if drop_last is None else drop_last
        return len(self) // batch_size if drop else -(-len(self) // batch_size)
