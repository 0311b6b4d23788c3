"""CIFAR-10/100 python pickles, made long-tailed with the exponential profile of Cao et al. (LDAM-DRW).

Training split: class i keeps `int(n_max * (1 / R) ** (i / (C - 1)))` images, chosen by shuffling each
class's indices with `numpy.random.seed(0)` in label order, exactly as LDAM-DRW's `IMBALANCECIFAR10` does
(CIFAR-100-LT R=100 -> 10,847 images: 500, 477, 455, ..., 5). The test split stays balanced.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np

from ..samples import SampleList, SplitError, SplitRequest, SplitWarning
from . import register

CIFAR = {
    # dataset: (folder, train files, test files, label key, label-names file, label-names key, classes)
    "cifar10_lt": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
        "batches.meta",
        "label_names",
        10,
    ),
    "cifar100_lt": ("cifar-100-python", ["train"], ["test"], "fine_labels", "meta", "fine_label_names", 100),
}
DEFAULT_IMB_RATIO = 100.0


def cifar_lt_counts(n_max: int, num_classes: int, imb_ratio: float) -> list[int]:
    """Images kept per class: LDAM-DRW's `get_img_num_per_cls(..., 'exp', 1 / imb_ratio)`, float for float."""
    if imb_ratio < 1:
        raise SplitError(f"--imb-ratio must be >= 1 (n_max / n_min), got {imb_ratio}")
    imb_factor = 1.0 / imb_ratio
    return [int(n_max * (imb_factor ** (i / (num_classes - 1.0)))) for i in range(num_classes)]


def long_tail_indices(labels: np.ndarray, counts: list[int], seed: int = 0) -> np.ndarray:
    """Indices of the kept images, class by class in label order (LDAM-DRW's `gen_imbalanced_data`)."""
    rng = np.random.RandomState(seed)  # the legacy global stream that `np.random.seed(0)` gives
    kept = []
    for the_class, n in zip(np.unique(labels), counts, strict=False):
        idx = np.where(labels == the_class)[0]
        rng.shuffle(idx)
        kept.append(idx[:n])
    return np.concatenate(kept)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise SplitError(f"cannot read CIFAR pickle {path}: {exc}") from None
    # Keys are bytes in the official pickles; accept str keys from re-pickled copies too.
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _folder(root: Path, name: str, probe: str) -> Path:
    for candidate in (root / name, root):
        if (candidate / probe).is_file():
            return candidate
    raise SplitError(f"no CIFAR data under {root}: expected {root / name / probe}")


def _labels(raw, path: Path, classes: int) -> np.ndarray:
    """The labels of one pickle, checked: integers (not bools, floats or strings) in 0..classes-1."""
    arr = np.asarray(raw)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        bad = next(
            (i for i, v in enumerate(raw) if isinstance(v, bool) or not isinstance(v, int | np.integer)), 0
        )
        raise SplitError(f"{path}[{bad}]: label {raw[bad]!r} is not an integer")
    out = np.flatnonzero((arr < 0) | (arr >= classes))
    if len(out):
        more = f" (and {len(out) - 1} more)" if len(out) > 1 else ""
        raise SplitError(f"{path}[{out[0]}]: label {arr[out[0]]} is out of range 0..{classes - 1}{more}")
    return arr.astype(np.int64)


def load_cifar(dataset: str, root: Path, split: str) -> tuple[np.ndarray, np.ndarray, Path, tuple | None]:
    """(images N x 32 x 32 x 3 uint8, labels, folder, class names) of the source split, in file order."""
    folder_name, train_files, test_files, label_key, meta_file, names_key, classes = CIFAR[dataset]
    files = {"train": train_files, "test": test_files}.get(split)
    if files is None:
        raise SplitError(f"{dataset}: --split must be train or test, got {split!r}")
    folder = _folder(root, folder_name, files[0])
    data, labels = [], []
    for name in files:
        d = _unpickle(folder / name)
        if "data" not in d or label_key not in d:
            raise SplitError(f"{folder / name}: expected keys 'data' and '{label_key}', got {sorted(d)}")
        x = np.asarray(d["data"], dtype=np.uint8)
        if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(d[label_key]):
            raise SplitError(f"{folder / name}: 'data' must be N x 3072 with one label each, got {x.shape}")
        data.append(x)
        labels.extend(_labels(d[label_key], folder / name, classes).tolist())
    images = np.ascontiguousarray(np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    names = None
    if (folder / meta_file).is_file():
        raw = _unpickle(folder / meta_file).get(names_key)
        if raw is not None:
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in raw)
    return images, np.asarray(labels, dtype=np.int64), folder, names


def read_cifar(request: SplitRequest) -> SampleList:
    dataset = request.dataset
    num_classes = CIFAR[dataset][-1]
    if request.split_file is not None:
        raise SplitError(
            f"{dataset} reads the python pickles under --root: use --split train|test, not --split-file"
        )
    split = request.split or "train"
    images, labels, folder, names = load_cifar(dataset, request.root, split)
    index = np.arange(len(labels))
    extra: dict = {}
    if split == "train":
        ratio = DEFAULT_IMB_RATIO if request.imb_ratio is None else float(request.imb_ratio)
        n_max = int(np.bincount(labels, minlength=num_classes).max())
        index = long_tail_indices(labels, cifar_lt_counts(n_max, num_classes, ratio))
        extra["imb_ratio"] = ratio
    elif request.imb_ratio not in (None, 1, 1.0):
        warnings.warn(
            f"{dataset}: --imb-ratio applies to the training split only; {split} stays balanced",
            SplitWarning,
            stacklevel=2,
        )
    origin = str(folder / CIFAR[dataset][1 if split == "train" else 2][0])
    if len(CIFAR[dataset][1 if split == "train" else 2]) > 1:
        origin = str(folder / ("data_batch_*" if split == "train" else "test_batch"))
    return SampleList(
        dataset=dataset,
        split=split,
        stem=f"{dataset}_{split}",
        origin=origin,
        labels=labels[index],
        lines=index,
        num_classes=num_classes,
        arrays=images[index],
        line_kind="index",
        class_names=names,
        extra=extra,
    )


register("cifar10_lt")(read_cifar)
register("cifar100_lt")(read_cifar)
