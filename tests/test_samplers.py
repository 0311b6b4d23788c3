"""Samplers and epoch orders (pure numpy): coverage, class frequencies, rank slices, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.samplers import SAMPLERS, EpochOrder, eval_slice, make_sampler

# A long tail: 500, 300, ..., 5 samples over 6 classes, class-sorted like the LT split files.
COUNTS = np.array([500, 300, 120, 50, 20, 5])
LABELS = np.repeat(np.arange(len(COUNTS)), COUNTS)


def test_uniform_is_a_permutation_each_epoch():
    s = make_sampler("uniform", LABELS)
    a, b = s.order(0, seed=1), s.order(1, seed=1)
    assert sorted(a.tolist()) == list(range(len(LABELS))) == sorted(b.tolist())
    assert not np.array_equal(a, b)
    assert np.array_equal(
        a, make_sampler("uniform", LABELS).order(0, seed=1)
    )  # a pure function of (seed, epoch)
    assert not np.array_equal(a, s.order(0, seed=2))


def test_uniform_epoch_length_shorter_and_longer():
    short = make_sampler("uniform", LABELS, num_samples=100).order(0, seed=0)
    assert len(short) == 100 and len(set(short.tolist())) == 100
    long = make_sampler("uniform", LABELS, num_samples=2 * len(LABELS) + 7).order(0, seed=0)
    counts = np.bincount(long, minlength=len(LABELS))
    assert len(long) == 2 * len(LABELS) + 7 and counts.min() == 2 and counts.max() == 3


@pytest.mark.parametrize("name,power", [("class_balanced", 0.0), ("sqrt", 0.5)])
def test_weighted_class_frequencies(name, power):
    s = make_sampler(name, LABELS, num_samples=60_000)
    expected = COUNTS**power / (COUNTS**power).sum()
    np.testing.assert_allclose(s.class_probabilities(), expected)
    freq = np.bincount(LABELS[s.order(3, seed=0)], minlength=len(COUNTS)) / 60_000
    np.testing.assert_allclose(freq, expected, atol=0.01)  # 4+ standard deviations at this length


def test_weighted_samples_within_a_class_are_uniform():
    order = make_sampler("class_balanced", LABELS, num_samples=60_000).order(0, seed=0)
    tail = order[LABELS[order] == 5]  # the 5-sample class: each of its samples about 1/5 of its draws
    share = np.bincount(tail - tail.min(), minlength=5) / len(tail)
    np.testing.assert_allclose(share, 0.2, atol=0.03)


def test_weighted_default_length_is_dataset_size_and_empty_classes_never_drawn():
    labels = np.array([0, 0, 0, 2, 2, 5])  # classes 1, 3, 4 are empty
    s = make_sampler("sqrt", labels)
    order = s.order(0, seed=0)
    assert len(order) == len(labels)
    assert set(labels[make_sampler("class_balanced", labels, 1000).order(0, 0)].tolist()) == {0, 2, 5}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_slices_partition_the_stream(name, world_size):
    s = make_sampler(name, LABELS, num_samples=980)  # below the dataset size (995): no sample twice
    stream = s.order(4, seed=7)
    slices = [s.rank_order(4, seed=7, rank=r, world_size=world_size) for r in range(world_size)]
    per = 980 // world_size
    assert all(len(x) == per for x in slices)  # equal batch counts on every rank
    assert np.array_equal(np.concatenate(slices), stream[: per * world_size])
    if name == "uniform":
        assert len(set(np.concatenate(slices).tolist())) == per * world_size  # disjoint across ranks


@pytest.mark.parametrize("n,world_size", [(72, 1), (71, 2), (10, 3), (2, 5)])
def test_eval_slices_cover_every_sample_once(n, world_size):
    parts = [eval_slice(n, r, world_size) for r in range(world_size)]
    assert np.array_equal(np.concatenate(parts), np.arange(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_epoch_order_lengths_and_batches():
    train = EpochOrder(LABELS, train=True, seed=0, rank=1, world_size=2)
    assert len(train) == len(LABELS) // 2 and train.num_batches(64) == (len(LABELS) // 2) // 64
    ev = EpochOrder(LABELS[:71], train=False, rank=1, world_size=2)
    assert len(ev) == 36 and ev.num_batches(16) == 3 and np.array_equal(ev(5), np.arange(35, 71))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown sampler 'nope'.*class_balanced"):
        make_sampler("nope", LABELS)
    with pytest.raises(ValueError, match="num_samples"):
        make_sampler("uniform", LABELS, num_samples=0)
    with pytest.raises(ValueError, match="rank"):
        EpochOrder(LABELS, train=True, rank=2, world_size=2)
    with pytest.raises(ValueError, match="empty"):
        make_sampler("uniform", np.array([], np.int64))
