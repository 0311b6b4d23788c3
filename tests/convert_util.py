"""Fixture writers for the converter tests: small image trees, lists, iNaturalist JSON and CIFAR pickles,
all in the real on-disk formats."""

from __future__ import annotations

import io
import json
import pickle
import random
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(ROOT / "tools" / "convert_datasets.py")]


def run_cli(*args, check_rc=None, in_process=True):
    """The CLI's (returncode, stdout, stderr). In-process by default (a fresh interpreter costs seconds of
    imports); `in_process=False` runs it exactly as a user would, warnings included."""
    args = [str(a) for a in args]
    if in_process:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            from tools import convert_datasets

            try:
                rc = convert_datasets.main(args)
            except SystemExit as exc:  # argparse
                rc = exc.code
        p = subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())
    else:
        p = subprocess.run([*CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check_rc is not None:
        assert p.returncode == check_rc, p.stderr
    return p


def convert_tree(tree: Path, out: Path, *extra, split: str = "train.txt", dataset: str = "imagenet_lt", **kw):
    """`convert_datasets DATASET --root TREE --split-file TREE/SPLIT --out OUT *EXTRA` through `run_cli`."""
    return run_cli(dataset, "--root", tree, "--split-file", tree / split, "--out", out, *extra, **kw)


def pattern(label: int, i: int, size: tuple[int, int] = (48, 40)) -> np.ndarray:
    """A smooth image whose colour encodes (label, i): distinct per sample, easy on JPEG."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    r = (label * 37 + i * 11) % 200 + 20 + 0 * xx
    g = (xx * 200 // max(w - 1, 1)) % 256
    b = (yy * 200 // max(h - 1, 1) + i * 5) % 256
    return np.stack([r, g, b], -1).astype(np.uint8)


def write_image_tree(root: Path, counts: list[int], size=(48, 40), sub: str = "train", ext: str = ".jpg"):
    """root/<sub>/c<label>/<i>.jpg for counts[label] images each; returns [(relative path, label, pixels)]."""
    items = []
    for label, n in enumerate(counts):
        for i in range(n):
            rel = f"{sub}/c{label:02d}/{i:03d}{ext}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            arr = pattern(label, i, size)
            Image.fromarray(arr).save(root / rel, format="JPEG", quality=95)
            items.append((rel, label, arr))
    return items


def write_slow_tree(root: Path, n: int = 24) -> Path:
    """`n` copies of a noise PNG of 1600x1200 listed in root/big.txt: seconds to convert on one core (PNG has
    no reduced decode), long enough to interrupt a conversion half-way; quick to write (one encode)."""
    (root / "x").mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "x/0.png", compress_level=1)
    for i in range(1, n):
        shutil.copyfile(root / "x/0.png", root / f"x/{i}.png")
    (root / "big.txt").write_text("".join(f"x/{i}.png {i % 2}\n" for i in range(n)))
    return root


def write_list(path: Path, items, shuffle_seed: int | None = 0) -> list[tuple[str, int]]:
    """`<path> <label>` lines, shuffled (real lists come in any order); returns the lines' (path, label)."""
    rows = [(rel, label) for rel, label, *_ in items]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    path.write_text("".join(f"{rel} {label}\n" for rel, label in rows))
    return rows


def write_inat_json(path: Path, items, num_categories: int, seed: int = 0) -> list[tuple[str, int]]:
    """Official-format iNaturalist JSON, annotations shuffled apart from images. Returns the images' order."""
    rng = random.Random(seed)
    rows = [(rel, label) for rel, label, *_ in items]
    rng.shuffle(rows)
    ids = rng.sample(range(100, 100000), len(rows))
    pairs = list(zip(ids, rows, strict=True))
    images = [{"id": i, "file_name": rel, "width": 48, "height": 40, "license": 0} for i, (rel, _) in pairs]
    annotations = [{"id": k, "image_id": i, "category_id": lab} for k, (i, (_, lab)) in enumerate(pairs)]
    rng.shuffle(annotations)
    categories = [{"id": c, "name": f"cat{c}", "kingdom": "Plantae"} for c in range(num_categories)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return rows


def write_cifar(root: Path, kind: str, per_class_train: int, per_class_test: int, seed: int = 0):
    """A miniature `cifar-10-batches-py` or `cifar-100-python` folder, pickled like the official one (bytes
    keys, `data` uint8 N x 3072 in CHW order). Returns {file name: (data, labels)}."""
    rng = np.random.default_rng(seed)
    classes = 10 if kind == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)

    def block(per_class: int):
        labels = np.repeat(np.arange(classes), per_class)
        rng.shuffle(labels)
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        return data, labels.tolist()

    written = {}
    if kind == "cifar10":
        train = [block(per_class_train) for _ in range(5)]  # each batch holds per_class_train of every class
        for i, (data, labels) in enumerate(train, 1):
            d = {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": labels,
                b"data": data,
                b"filenames": [f"img{i}_{k}.png".encode() for k in range(len(labels))],
            }
            (folder / f"data_batch_{i}").write_bytes(pickle.dumps(d))
            written[f"data_batch_{i}"] = (data, labels)
        data, labels = block(per_class_test)
        d = {b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": data}
        (folder / "test_batch").write_bytes(pickle.dumps(d))
        written["test_batch"] = (data, labels)
        meta = {b"label_names": [f"class{c}".encode() for c in range(classes)], b"num_vis": 3072}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    else:
        for name, per in (("train", per_class_train), ("test", per_class_test)):
            data, labels = block(per)
            d = {
                b"filenames": [],
                b"batch_label": name.encode(),
                b"fine_labels": labels,
                b"coarse_labels": [lab // 5 for lab in labels],
                b"data": data,
            }
            (folder / name).write_bytes(pickle.dumps(d))
            written[name] = (data, labels)
        meta = {b"fine_label_names": [f"fine{c}".encode() for c in range(classes)], b"coarse_label_names": []}
        (folder / "meta").write_bytes(pickle.dumps(meta))
    return written


def chw_to_hwc(rows: np.ndarray) -> np.ndarray:
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
