"""The embedded demo dataset: long-tailed, deterministic, real JPEGs, and varied inside each class."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from tools.longtail import long_tail_counts
from tools.make_demo_data import CLASS_NAMES, main, make_demo_data, render
from trainer.metrics import shot_group


def _read_list(path):
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(p, int(label)) for p, label in rows]


def test_long_tail_profile_matches_cifar_lt_formula():
    counts = long_tail_counts(12, 300, 100.0)
    assert counts[0] == 300 and counts[-1] == 3
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))
    # CIFAR-100-LT IF 100 uses the same profile: 10,847 images, 500, 477, 455 ... 5
    cifar = long_tail_counts(100, 500, 100.0)
    assert sum(cifar) == 10_847 and cifar[:3] == [500, 477, 455] and cifar[-1] == 5


def test_long_tail_profile_keeps_an_image_in_every_class():
    # CIFAR-LT's own profile would leave 2 * 0.1 -> 0 images to the last class: a class the converter refuses.
    assert long_tail_counts(3, 2, 100.0) == [2, 1, 1]
    assert long_tail_counts(1, 7, 100.0) == [7]
    with pytest.raises(ValueError, match="imbalance must be >= 1"):
        long_tail_counts(4, 10, 0.5)


def test_default_set_has_many_medium_and_few_classes():
    """The demo's defaults (n_max 300, IF 30): 4 many, 5 medium and 3 few classes of 18, 13 and 10 images."""
    import inspect

    defaults = inspect.signature(make_demo_data).parameters
    n_max, imbalance = defaults["n_max"].default, defaults["imbalance"].default
    counts = long_tail_counts(defaults["num_classes"].default, n_max, imbalance)
    groups = Counter(shot_group(n) for n in counts)
    assert (groups["many"], groups["medium"], groups["few"]) == (4, 5, 3)
    assert counts[-3:] == [18, 13, 10]


def test_lists_images_and_balanced_test(demo_images):
    train = _read_list(demo_images / "train.txt")
    test = _read_list(demo_images / "test.txt")
    assert Counter(label for _, label in train) == dict(enumerate(long_tail_counts(12, 60, 10.0)))
    assert set(Counter(label for _, label in test).values()) == {6}
    for rel, _ in train[:5] + test[-5:]:
        with Image.open(demo_images / rel) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (32, 32)


def test_deterministic_from_seed(tmp_path):
    kw = dict(num_classes=3, n_max=4, imbalance=2.0, test_per_class=1, size=(24, 20), workers=1)
    make_demo_data(tmp_path / "a", seed=7, **kw)
    make_demo_data(tmp_path / "b", seed=7, **kw)
    make_demo_data(tmp_path / "c", seed=8, **kw)

    def digest(root):
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*.jpg")))).hexdigest()

    assert (tmp_path / "a" / "train.txt").read_text() == (tmp_path / "b" / "train.txt").read_text()
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_images_vary_inside_a_class_and_classes_differ_in_shape_and_texture():
    same_class = np.stack([np.asarray(render(0, seed, (48, 48)), np.float32) for seed in range(8)])
    # Backgrounds, colours and positions vary: per-pixel spread across samples of one class is large.
    assert same_class.std(axis=0).mean() > 30
    # Class 0 and class len(SHAPES) share the shape (circle) but differ in texture (solid vs stripes).
    assert CLASS_NAMES[0].split("_")[0] == CLASS_NAMES[6].split("_")[0]
    assert CLASS_NAMES[0].split("_")[1] != CLASS_NAMES[6].split("_")[1]


def test_cli_rejects_bad_class_count(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--classes", "99"]) == 2
    assert "--classes must be in 2..12" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["64", "400x350"])
def test_cli_size_argument(tmp_path, size):
    out = tmp_path / "d"
    assert (
        main(
            [
                "--out",
                str(out),
                "--classes",
                "2",
                "--n-max",
                "2",
                "--test-per-class",
                "1",
                "--size",
                size,
                "--workers",
                "1",
            ]
        )
        == 0
    )
    w, _, h = size.partition("x")
    with Image.open(out / _read_list(out / "train.txt")[0][0]) as im:
        assert im.size == (int(w), int(h or w))
