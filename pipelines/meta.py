"""`<stem>.meta.json`: what a conversion wrote, and the class counts every loss and metric relies on.

`read_meta` takes the meta file or any backend's file or folder for the stem. The JSON shape is a contract:
{"dataset", "split", "stem", "num_classes", "num_samples", "class_counts", "max_resolution", "jpeg_quality",
"seed", "formats": {backend: entry, names relative to the meta's folder, "encoding": ffcv "raw" | "jpeg" |
"jpeg+raw", dali "png" | "jpeg" | "jpeg+png"}, "skipped"}, plus optional `class_names`, `source`,
`imb_ratio`, `format_version`; readers ignore unknown keys. Foreign data gets one in memory from its label
counts (`counted_meta`: `dataset = "foreign"`, the cache file in `formats["foreign"]["counts"]`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .backends import SUFFIXES
from .errors import DataError
from .fileio import atomic_write_text

META_SUFFIX = ".meta.json"
FORMAT_VERSION = 1
FOREIGN = "foreign"  # `dataset` (and `formats` key) of a meta counted from the labels of unconverted data


class MetaError(DataError):
    """A meta file that is missing, unreadable or inconsistent; the message names the file."""


@dataclass(frozen=True)
class DatasetMeta:
    dataset: str
    split: str
    stem: str
    num_classes: int
    num_samples: int
    class_counts: tuple[int, ...]
    max_resolution: int
    jpeg_quality: int
    seed: int
    formats: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: tuple[dict[str, Any], ...] = ()
    class_names: tuple[str, ...] | None = None
    source: str | None = None  # the split file (or pickles, or folder) that was converted
    imb_ratio: float | None = None  # CIFAR-LT: the imbalance ratio the training split was cut with
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        counts = tuple(int(c) for c in self.class_counts)
        object.__setattr__(self, "class_counts", counts)
        object.__setattr__(self, "skipped", tuple(dict(s) for s in self.skipped))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))
        if len(counts) != self.num_classes:
            raise MetaError(f"class_counts has {len(counts)} entries but num_classes is {self.num_classes}")
        if sum(counts) != self.num_samples:
            raise MetaError(f"class_counts sum to {sum(counts)} but num_samples is {self.num_samples}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise MetaError(
                f"class_names has {len(self.class_names)} entries, num_classes is {self.num_classes}"
            )

    def origin(self, path: str | os.PathLike) -> tuple[Path, str]:
        """Where these counts come from for the data at `path` (its meta file, or the cache of the counted
        labels of foreign data) and what renews them: for error messages."""
        cached = self.formats.get(FOREIGN, {}).get("counts")
        if cached:
            return Path(cached), f"delete {cached} to count again"
        return meta_path_for(path), "convert the split again"

    def check_labels(self, labels: Any, path: str | os.PathLike) -> None:
        """The labels a loader holds for `path` against this meta file: the same number of samples, every
        label a class index, and per class exactly the counts the losses and metrics will use (a meta file
        edited or copied from another conversion would otherwise train with wrong margins, priors and shot
        groups)."""
        import numpy as np

        where, again = self.origin(path)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != self.num_samples:
            raise MetaError(
                f"{path}: holds {len(labels)} samples, its meta file {where} says {self.num_samples}; {again}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise MetaError(
                f"{path}: labels span {labels.min()}..{labels.max()}, {where} has {self.num_classes} "
                f"classes; {again}"
            )
        counts = np.bincount(labels, minlength=self.num_classes)
        differ = np.flatnonzero(counts != np.asarray(self.class_counts))
        if len(differ):
            c = int(differ[0])
            raise MetaError(
                f"{where}: class_counts[{c}] = {self.class_counts[c]} but {path} holds {counts[c]} images of "
                f"class {c} ({len(differ)} classes differ); the meta file does not describe this data: "
                f"{again}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_counts"] = list(self.class_counts)
        d["skipped"] = list(self.skipped)
        if self.class_names is None:
            d.pop("class_names")
        else:
            d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "<dict>") -> DatasetMeta:
        required = (
            "dataset",
            "split",
            "stem",
            "num_classes",
            "num_samples",
            "class_counts",
            "max_resolution",
            "jpeg_quality",
            "seed",
        )
        missing = [k for k in required if k not in d]
        if missing:
            raise MetaError(f"{source}: missing key(s) {missing}")
        known = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in d.items() if k in known}
        try:
            return cls(**kwargs)
        except MetaError as exc:
            raise MetaError(f"{source}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise MetaError(f"{source}: malformed meta: {exc}") from None


def counted_meta(
    counts, *, split: str, stem: str, source: str, formats: dict[str, dict[str, Any]]
) -> DatasetMeta:
    """The meta of data that came without a meta file, from its per-class label counts (one entry a class,
    so `num_classes = len(counts)`). What a conversion would record and such data cannot tell (the largest
    image side, the JPEG quality, a seed) is 0: unknown."""
    counts = tuple(int(c) for c in counts)
    return DatasetMeta(
        dataset=FOREIGN,
        split=split,
        stem=stem,
        num_classes=len(counts),
        num_samples=sum(counts),
        class_counts=counts,
        max_resolution=0,
        jpeg_quality=0,
        seed=0,
        formats=formats,
        source=source,
    )


def meta_path_for(path: str | os.PathLike) -> Path:
    """`x.meta.json` for `x.meta.json`, `x<suffix>` of any backend (`x.beton`, `x.dali`), a file inside a
    folder format (a shard of `x.dali/`) or the bare stem `x`."""
    p = Path(path)
    name = p.name.rstrip("/")
    if name.endswith(META_SUFFIX):
        return p
    for suffix in SUFFIXES.values():
        if name.endswith(suffix):
            return p.with_name(name[: -len(suffix)] + META_SUFFIX)
    if p.suffix and any(p.parent.name.endswith(suffix) for suffix in SUFFIXES.values()):
        return meta_path_for(p.parent)
    return p.with_name(name + META_SUFFIX)


def read_meta(path: str | os.PathLike) -> DatasetMeta:
    """Read the meta beside a `.beton`, a `.dali` folder, or the `.meta.json` itself."""
    mp = meta_path_for(path)
    if not mp.is_file():
        raise MetaError(
            f"no dataset meta file {mp} (looked for it for {Path(path)}); "
            "convert the dataset with tools/convert_datasets.py first"
        )
    try:
        d = json.loads(mp.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MetaError(f"{mp}: cannot read meta: {exc}") from None
    if not isinstance(d, dict):
        raise MetaError(f"{mp}: expected a JSON object, got {type(d).__name__}")
    return DatasetMeta.from_dict(d, source=str(mp))


def write_meta(meta: DatasetMeta, path: str | os.PathLike) -> Path:
    """Write `meta` as JSON to `path` (a file name, or a folder: `<folder>/<stem>.meta.json`), atomically."""
    p = Path(path)
    if p.is_dir():
        p = p / f"{meta.stem}{META_SUFFIX}"
    atomic_write_text(p, json.dumps(meta.to_dict(), indent=1) + "\n")
    return p
