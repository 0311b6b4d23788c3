"""Write fastlt's embedded long-tailed image set: procedurally drawn JPEGs with ImageNet-LT-style lists.

A class is a (shape, fill pattern) pair, so neither outline nor texture alone tells classes apart; colour,
position, scale, rotation, background and clutter vary freely. Training counts follow CIFAR-LT's profile
(tools/longtail.py); the test split is balanced. Everything is a pure function of the seed.

    python -m tools.make_demo_data --out data/demo/images
writes  <out>/train/<class>/<i>.jpg, <out>/test/<class>/<i>.jpg, <out>/train.txt, <out>/test.txt
"""

from __future__ import annotations

import argparse
import colorsys
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipelines.fileio import atomic_write_text
from tools.longtail import long_tail_counts

SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon")
PATTERNS = ("solid", "stripes")
CLASS_NAMES = tuple(f"{shape}_{pattern}" for pattern in PATTERNS for shape in SHAPES)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(k: int, radii: list[float]) -> list[tuple[float, float]]:
        return [
            (
                cx + radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / k),
                cy + radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / k),
            )
            for i in range(k)
        ]

    if shape == "circle":
        return ring(48, [r])
    if shape == "square":
        return ring(4, [r * 1.15])
    if shape == "triangle":
        return ring(3, [r * 1.25])
    if shape == "star":
        return ring(10, [r * 1.2, r * 0.5])
    if shape == "hexagon":
        return ring(6, [r * 1.05])
    if shape == "cross":  # a plus sign with arms of width r/2.5, rotated by `angle`
        w = r / 2.5
        pts = [
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
        ]
        ca, sa = math.cos(angle), math.sin(angle)
        return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in pts]
    raise ValueError(f"unknown shape {shape!r}; valid: {SHAPES}")


def _random_colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A linear gradient between two random colours plus pixel noise."""
    c0 = np.array(_random_colour(rng), np.float32)
    c1 = np.array(_random_colour(rng), np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * math.cos(theta) + yy * math.sin(theta)) / max(w, h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 + (c1 - c0) * t[..., None] + rng.normal(0, 8, size=(h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, most: int) -> None:
    """Distractors: up to `most` thin lines and small blobs in random colours."""
    s = min(w, h)
    for _ in range(int(rng.integers(1, most + 1))):
        x0, y0, x1, y1 = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, h)
        draw.line(
            [(x0, y0), (x1, y1)], fill=_random_colour(rng), width=max(1, int(s * rng.uniform(0.01, 0.03)))
        )
    for _ in range(int(rng.integers(0, most))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), s * rng.uniform(0.02, 0.06)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_random_colour(rng))


def _class_colour(rng: np.random.Generator, label: int, num_classes: int) -> tuple[int, int, int]:
    """Each class has its own hue band (neighbours overlap a little): colour is a cue, not the answer."""
    hue = (label / num_classes + rng.normal(0, 0.035)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0))
    return int(255 * r), int(255 * g), int(255 * b)


def _contrasting_colour(
    rng: np.random.Generator, against: np.ndarray, distance: float
) -> tuple[int, int, int]:
    """A random colour at least `distance` (L1) away from `against`, so the object stays visible."""
    for _ in range(20):
        colour = _random_colour(rng, 10, 246)
        if np.abs(np.array(colour, np.float32) - against).sum() >= distance:
            break
    return colour


def render(label: int, seed: int, size: tuple[int, int]) -> Image.Image:
    """Draw one image of class `label`; the same (label, seed, size) always gives the same pixels."""
    rng = np.random.default_rng(seed)
    w, h = size
    shape = SHAPES[label % len(SHAPES)]
    pattern = PATTERNS[label // len(SHAPES)]
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)
    if rng.random() < 0.6:  # clutter behind the object
        _clutter(draw, rng, w, h, most=4)

    s = min(w, h)
    r = s * rng.uniform(0.22, 0.38)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    poly = _polygon(shape, cx, cy, r, rng.uniform(0, 2 * math.pi))
    colour = _class_colour(rng, label, len(CLASS_NAMES))
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon(poly, fill=255)
    if pattern == "stripes":  # stripes of a second colour at a random angle and period, inside the shape
        period = s * rng.uniform(0.08, 0.15)
        phi = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        band = ((xx * math.cos(phi) + yy * math.sin(phi)) // period) % 2 == 0
        second = _contrasting_colour(rng, np.array(colour, np.float32), 200)
        fill = np.where(band[..., None], np.array(colour, np.uint8), np.array(second, np.uint8))
        layer = Image.fromarray(fill.astype(np.uint8))
    else:
        layer = Image.new("RGB", (w, h), colour)
    img.paste(layer, (0, 0), mask)
    if rng.random() < 0.25:  # a little clutter over the object too
        _clutter(draw, rng, w, h, most=2)
    if rng.random() < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(radius=s * rng.uniform(0.004, 0.012)))
    return img


def _write_one(job: tuple[str, int, int, tuple[int, int], int]) -> None:
    path, label, seed, size, quality = job
    render(label, seed, size).save(path, format="JPEG", quality=quality)


def plan(num_classes: int, n_max: int, imbalance: float, test_per_class: int, seed: int):
    """(split, relative path, label, per-image seed) for every image, in class order like the LT lists."""
    if not 2 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"--classes must be in 2..{len(CLASS_NAMES)}, got {num_classes}")
    counts = {
        "train": long_tail_counts(num_classes, n_max, imbalance),
        "test": [test_per_class] * num_classes,
    }
    items = []
    for split_index, (split, per_class) in enumerate(counts.items()):
        for label, n in enumerate(per_class):
            for i in range(n):
                image_seed = seed * 1_000_003 + split_index * 100_003 + label * 10_007 + i
                items.append((split, f"{split}/{CLASS_NAMES[label]}/{i:05d}.jpg", label, image_seed))
    return items


def make_demo_data(
    out: Path,
    *,
    num_classes: int = 12,
    n_max: int = 300,
    imbalance: float = 30.0,
    test_per_class: int = 50,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    quality: int = 92,
    workers: int | None = None,
) -> dict[str, int]:
    """Write the image set under `out` and return the number of images per split."""
    out = Path(out)
    items = plan(num_classes, n_max, imbalance, test_per_class, seed)
    for _, rel, _, _ in items:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out / rel), label, s, size, quality) for _, rel, label, s in items]
    workers = workers or min(4, os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 64:
        # forkserver: a worker forked from a threaded process (a test runner, a progress bar) can hang on a
        # lock another thread held at the fork.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
            list(pool.map(_write_one, jobs, chunksize=32))
    else:
        for job in jobs:
            _write_one(job)
    totals = {}
    for split in ("train", "test"):
        lines = [f"{rel} {label}\n" for s, rel, label, _ in items if s == split]
        # Written atomically: a list file exists only once all its images do.
        atomic_write_text(out / f"{split}.txt", "".join(lines), fsync=False)
        totals[split] = len(lines)
    return totals


def parse_size(text: str) -> tuple[int, int]:
    """`--size` of every tool that generates images: WIDTHxHEIGHT, or SIDE for a square."""
    try:
        w, _, h = text.lower().partition("x")
        return (int(w), int(h or w))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--size takes WIDTHxHEIGHT or SIDE, got {text!r}") from exc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("data/demo/images"))
    p.add_argument("--classes", type=int, default=12, help=f"number of classes (2..{len(CLASS_NAMES)})")
    p.add_argument("--n-max", type=int, default=300, help="training images of the most frequent class")
    p.add_argument("--imbalance", type=float, default=30.0, help="n_max / n_min")
    p.add_argument("--test-per-class", type=int, default=50)
    p.add_argument(
        "--size", type=parse_size, default=(64, 64), help="WIDTHxHEIGHT of every image (default 64x64)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quality", type=int, default=92, help="JPEG quality")
    p.add_argument("--workers", type=int, default=None)
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        totals = make_demo_data(
            args.out,
            num_classes=args.classes,
            n_max=args.n_max,
            imbalance=args.imbalance,
            test_per_class=args.test_per_class,
            size=args.size,
            seed=args.seed,
            quality=args.quality,
            workers=args.workers,
        )
    except ValueError as exc:
        print(f"make_demo_data: {exc}", file=sys.stderr)
        return 2
    counts = long_tail_counts(args.classes, args.n_max, args.imbalance)
    print(
        f"demo data: {totals['train']} train / {totals['test']} test images, {args.classes} classes, "
        f"train counts {counts[0]}..{counts[-1]}, {args.size[0]}x{args.size[1]} px, "
        f"in {time.perf_counter() - start:.1f} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
