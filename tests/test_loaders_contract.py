"""make_loader on both backends (CPU): the contract's shapes, rank sharding, exact evaluation, samplers,
set_epoch determinism, extra views. Loaders are module-scoped: each FFCV loader pays a numba JIT compile.

Training loaders built with crop_scale=(1, 1), crop_ratio=(1, 1), hflip=False crop the whole (square) image,
so a sample's output pixels identify it: that is how these tests see which samples a rank visited.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines import DataConfig, make_loader, read_meta
from pipelines.backends import BACKENDS as REGISTRY
from pipelines.samplers import EpochOrder

# numba prints a harmless KeyError from a finalizer of FFCV's compiled functions, never a failure of ours.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = list(REGISTRY)
RES = 24
BS = 16
WHOLE_IMAGE = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False)


def config(root: Path, backend: str, **kw) -> DataConfig:
    """A data config over the converted splits in `root`, batches of BS per rank of `ranks`."""
    return DataConfig(**{"backend": backend, "dir": str(root), "resolution": RES, "num_workers": 2, **kw})


def file_labels(path: Path) -> np.ndarray:
    backend = next(b for b in REGISTRY.values() if path.name.endswith(b.suffix))
    return backend.read_labels(path, DataConfig(), None)


def digests(images: torch.Tensor) -> list[str]:
    return [hashlib.blake2b(img.contiguous().numpy().tobytes(), digest_size=12).hexdigest() for img in images]


def run_epoch(loader, epoch=None):
    """(digests, labels, batch shapes) of one epoch."""
    if epoch is not None:
        loader.set_epoch(epoch)
    keys, labels, shapes = [], [], []
    for images, y in loader:
        check_batch(images, y, loader.meta.num_classes)
        keys += digests(images)
        labels.append(y)
        shapes.append(images.shape[0])
    return keys, torch.cat(labels).numpy(), shapes


def check_batch(images, labels, num_classes, views=1):
    n = labels.shape[0]
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert images.shape == (views * n, 3, RES, RES) and labels.shape == (n,)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert images.device == torch.device("cpu") == labels.device
    assert int(labels.min()) >= 0 and int(labels.max()) < num_classes


@pytest.fixture(scope="module")
def odd_converted(demo_images, tmp_path_factory, convert_cli) -> Path:
    """71 test images (not divisible by 2 ranks or by the batch size), converted by the CLI."""
    out = tmp_path_factory.mktemp("odd_converted")
    split = out / "odd.txt"
    split.write_text("\n".join((demo_images / "test.txt").read_text().splitlines()[:71]) + "\n")
    convert_cli(demo_images, out, split_file=split)
    return out


@pytest.fixture(scope="module", params=BACKENDS)
def ranks(request, demo_converted):
    """Training loaders for ranks 0 and 1 of 2, whole-image crops."""
    cfg = config(demo_converted, request.param, batch_size=2 * BS, **WHOLE_IMAGE)
    loaders = [make_loader(cfg, "train", rank=r, world_size=2, seed=3) for r in (0, 1)]
    yield loaders
    for loader in loaders:
        loader.close()


@pytest.fixture(scope="module", params=BACKENDS)
def evaluation(request, odd_converted):
    cfg = config(odd_converted, request.param, eval="odd", batch_size=2 * BS, eval_crop_ratio=1.0)
    loaders = [make_loader(cfg, "eval", rank=r, world_size=2) for r in (0, 1)]
    yield loaders
    for loader in loaders:
        loader.close()


def test_training_ranks_are_disjoint_and_cover_the_data(ranks):
    meta = ranks[0].meta
    assert meta.num_samples == 288 and len(ranks[0]) == len(ranks[1]) == 288 // 2 // BS
    (k0, y0, s0), (k1, y1, s1) = (run_epoch(loader, epoch=0) for loader in ranks)
    assert s0 == s1 == [BS] * len(ranks[0])  # fixed shapes, equal batch counts
    assert len(set(k0)) == len(k0) == len(set(k1)) == 144 and not set(k0) & set(k1)
    assert len(set(k0) | set(k1)) == meta.num_samples  # together: every training image once
    counts = np.bincount(np.concatenate([y0, y1]), minlength=meta.num_classes)
    assert counts.tolist() == list(meta.class_counts)


def test_set_epoch_fixes_the_order(ranks):
    loader = ranks[0]
    a, ya, _ = run_epoch(loader, epoch=5)
    assert loader.epoch == 6  # iterating advances to the next epoch
    b, yb, _ = run_epoch(loader, epoch=5)
    c, _, _ = run_epoch(loader)  # epoch 6
    assert a == b and np.array_equal(ya, yb)
    assert a != c and set(a) != set(c)  # another epoch: another order and another half of the data
    # The labels follow the shared sampler's order for (seed, epoch, rank) exactly.
    order = EpochOrder(file_labels(loader.spec.path), train=True, seed=3, rank=0, world_size=2)(5)
    assert np.array_equal(ya, file_labels(loader.spec.path)[order])


def test_abandoned_epochs_release_their_workers(ranks):
    loader = ranks[1]
    run_epoch(loader, epoch=0)
    threads = threading.active_count()
    for _ in range(3):
        for i, _batch in enumerate(loader):
            if i == 1:
                break
    it = iter(loader)
    next(it)  # a held, half-read iterator must not disturb the next epoch either
    keys, _, shapes = run_epoch(loader, epoch=0)
    assert shapes == [BS] * len(loader) and len(set(keys)) == 144
    with pytest.raises(RuntimeError, match="abandoned"):
        next(it)  # the superseded epoch says so instead of reading the current one's batches
    assert threading.active_count() <= threads + 1


def test_evaluation_sees_every_sample_exactly_once(evaluation):
    meta = evaluation[0].meta
    assert meta.num_samples == 71
    results = [run_epoch(loader) for loader in evaluation]
    assert [len(loader) for loader in evaluation] == [3, 3]
    assert [r[2] for r in results] == [[16, 16, 3], [16, 16, 4]]  # 35 + 36 samples, the last batch partial
    keys = results[0][0] + results[1][0]
    assert len(keys) == len(set(keys)) == 71  # no sample twice, none missing (no padding duplicates)
    counts = np.bincount(np.concatenate([results[0][1], results[1][1]]), minlength=meta.num_classes)
    assert counts.tolist() == list(meta.class_counts)
    again = [run_epoch(loader)[0] for loader in evaluation]  # a second pass: the same samples, same order
    assert again == [results[0][0], results[1][0]]


def reference_images(ranks) -> dict[int, torch.Tensor]:
    """Sample index -> its whole-image training output, from the rank loaders' epoch 0 and their orders."""
    labels = file_labels(ranks[0].spec.path)
    ref = {}
    for r, loader in enumerate(ranks):
        order = EpochOrder(labels, train=True, seed=3, rank=r, world_size=2)(0)
        loader.set_epoch(0)
        images = torch.cat([x.clone() for x, _ in loader])
        ref.update(zip(order[: len(images)].tolist(), images, strict=True))
    return ref


def test_padded_crop_is_a_shifted_whole_image(ranks):
    """crop="padded": RandomCrop(res, padding=4) of the whole image, zero fill, integer shifts up to 4."""
    ref = reference_images(ranks)
    path = ranks[0].spec.path
    backend = "ffcv" if path.suffix == ".beton" else "dali"
    cfg = config(path.parent, backend, batch_size=BS, crop="padded", crop_padding=4, hflip=False)
    with make_loader(cfg, "train", seed=5) as loader:
        order = EpochOrder(file_labels(path), train=True, seed=5)(0)
        images = torch.cat([x.clone() for x, _ in loader])
    shifts = Counter()
    for k, out in enumerate(images[:96].int()):
        whole = torch.nn.functional.pad(ref[int(order[k])].int(), (4, 4, 4, 4))
        match = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if (whole[:, dy : dy + RES, dx : dx + RES] - out).abs().max() <= 2
        ]
        assert match, f"output {k} is no shifted crop of sample {order[k]}"
        shifts[match[0]] += 1
    assert len(shifts) > 20  # the offsets vary (81 possible)


@pytest.mark.parametrize("backend", BACKENDS)
def test_balanced_sampler_three_views_and_augmentations(backend, demo_converted):
    """One loader (one FFCV compile) for the training options the papers' recipes combine."""
    cfg = config(
        demo_converted,
        backend,
        batch_size=32,
        sampler="class_balanced",
        epoch_samples=480,
        auto_augment="cifar10",
        cutout=8,
    )
    with make_loader(cfg, "train", views=3, seed=1) as loader:
        assert len(loader) == 480 // 32
        labels = []
        for images, y in loader:
            check_batch(images, y, loader.meta.num_classes, views=3)
            labels.append(y)
        freq = np.bincount(torch.cat(labels).numpy(), minlength=12) / (len(loader) * 32)
        # Natural frequencies run from 21% to 2%; balanced sampling gives 1/12 each (std about 1.3% here).
        np.testing.assert_allclose(freq, 1 / 12, atol=0.05)
        v0, v1, v2 = images.view(3, 32, 3, RES, RES).float().unbind(0)  # view-major: [view 0; view 1; view 2]
        assert (v1 - v2).abs().mean() > 1 and (v0 - v1).abs().mean() > 1  # independent augmentations
        gray = (v1[:, 0] == v1[:, 1]).flatten(1).all(1) & (v1[:, 1] == v1[:, 2]).flatten(1).all(1)
        assert not gray.all()


def test_meta_is_exposed(demo_converted):
    cfg = config(demo_converted, "dali", batch_size=BS, num_workers=1)
    with make_loader(cfg, "eval") as loader:
        assert loader.meta == read_meta(demo_converted / "test.dali") and loader.meta.num_classes == 12
        assert len(loader) == 72 // BS + 1
        keys, labels, shapes = run_epoch(loader)
        assert shapes[-1] == 72 % BS and Counter(labels.tolist()) == Counter({c: 6 for c in range(12)})


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_can_keep_its_last_partial_batch(backend, demo_converted):
    cfg = config(demo_converted, backend, batch_size=40, drop_last=False, **WHOLE_IMAGE)
    with make_loader(cfg, "train", seed=2) as loader:
        keys, labels, shapes = run_epoch(loader)
    assert len(loader) == 8 and shapes == [40] * 7 + [8]  # 288 = 7 x 40 + 8
    assert len(set(keys)) == 288 and np.bincount(labels).tolist() == list(loader.meta.class_counts)
