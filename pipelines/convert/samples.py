"""The list of (image, label) pairs a reader produces, and the checks every split goes through."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class SplitError(ValueError):
    """A split file (or source) that cannot be converted as it stands; the message names the file and line."""


class SplitWarning(UserWarning):
    """Something odd in a split that the converter works around (duplicate lines, ...)."""


@dataclass(frozen=True)
class SplitRequest:
    """What the user asked for: the reader turns it into a `SampleList`."""

    dataset: str
    root: Path
    split_file: Path | None = None
    split: str | None = None
    imb_ratio: float | None = None
    num_classes: int | None = None  # expected number of classes, where the source does not say
    allow_outside_root: bool = False  # split-file paths may be absolute or leave root with `..`


@dataclass
class SampleList:
    """Every sample of one split, in the order of its source.

    Images are either files (`paths`, relative to `root`) or in-memory HxWx3 uint8 arrays (`arrays`, CIFAR).
    `lines[i]` locates sample i in `origin`: with `line_kind` "line" the 1-based line of a list file, with
    "entry" the 1-based position in a JSON `images` list or a folder walk, with "index" the 0-based index
    into a CIFAR array. `classes_known` is False when `num_classes` was only inferred (highest label + 1):
    then an empty class may well be a typo'd label, and messages name where the highest label is.
    """

    dataset: str
    split: str
    stem: str
    origin: str
    labels: np.ndarray
    lines: np.ndarray
    num_classes: int
    root: Path | None = None
    paths: list[str] | None = None
    arrays: np.ndarray | None = None
    line_kind: str = "line"
    class_names: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    classes_known: bool = True

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.lines = np.asarray(self.lines, dtype=np.int64)
        n = len(self.labels)
        if (self.paths is None) == (self.arrays is None):
            raise ValueError("a SampleList holds either paths or arrays")
        sources = len(self.paths) if self.paths is not None else len(self.arrays)
        if not (sources == len(self.lines) == n):
            raise ValueError(f"{sources} sources, {len(self.lines)} lines, {n} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def where(self, i: int) -> str:
        """`<origin> line 17`, `<origin> entry 3`, `<origin>[12]`: where sample i comes from, for messages."""
        n = int(self.lines[i])
        return f"{self.origin}[{n}]" if self.line_kind == "index" else f"{self.origin} {self.line_kind} {n}"

    def describe(self, i: int) -> str:
        """The image path (or array index) of sample i."""
        if self.paths is not None:
            return str((self.root or Path()) / self.paths[i])
        return self.where(i)

    def key(self, i: int) -> str:
        """What identifies sample i across conversions: its path as listed, or its index in the arrays."""
        return self.paths[i] if self.paths is not None else str(int(self.lines[i]))

    def display_path(self, i: int) -> str:
        """Sample i's path as written in its split file (or `origin[index]` for arrays)."""
        return self.paths[i] if self.paths is not None else self.describe(i)

    def subset(self, keep: Sequence[int] | np.ndarray) -> SampleList:
        keep = np.asarray(keep, dtype=np.int64)
        return SampleList(
            dataset=self.dataset,
            split=self.split,
            stem=self.stem,
            origin=self.origin,
            labels=self.labels[keep],
            lines=self.lines[keep],
            num_classes=self.num_classes,
            root=self.root,
            paths=[self.paths[i] for i in keep] if self.paths is not None else None,
            arrays=self.arrays[keep] if self.arrays is not None else None,
            line_kind=self.line_kind,
            class_names=self.class_names,
            extra=dict(self.extra),
            classes_known=self.classes_known,
        )

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.num_classes).tolist()


def check_labels(samples: SampleList) -> None:
    """Every label must lie in 0..num_classes-1; the error names the first offending lines."""
    bad = np.flatnonzero((samples.labels < 0) | (samples.labels >= samples.num_classes))
    if len(bad):
        shown = "; ".join(f"{samples.where(i)}: label {samples.labels[i]}" for i in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise SplitError(f"{len(bad)} label(s) out of range 0..{samples.num_classes - 1}: {shown}{more}")


def check_empty_classes(counts: Sequence[int] | np.ndarray, origin: str, allow: bool, hint: str = "") -> None:
    """A class without any image breaks class-count based losses: an error unless explicitly allowed.
    `hint` (see `class_count_hint`) is added to the message."""
    empty = np.flatnonzero(np.asarray(counts) == 0).tolist()
    if not empty:
        return
    shown = ", ".join(map(str, empty[:20])) + (" ..." if len(empty) > 20 else "")
    msg = f"{origin}: {len(empty)} of {len(counts)} classes have no image (labels {shown})"
    msg += f"; {hint}" if hint else ""
    if not allow:
        raise SplitError(msg + "; pass --allow-empty-classes to convert it anyway")
    warnings.warn(msg, SplitWarning, stacklevel=2)


def class_count_hint(samples: SampleList) -> str:
    """Where an inferred class count comes from: the lines holding the highest label (a typo'd label far out
    of range shows up as many empty classes, and this names its line). Empty when the count was given."""
    if samples.classes_known or not len(samples):
        return ""
    top = int(samples.labels.max())
    at = np.flatnonzero(samples.labels == top)
    where = "; ".join(samples.where(i) for i in at[:3]) + (f" and {len(at) - 3} more" if len(at) > 3 else "")
    return (
        f"the class count {samples.num_classes} is the highest label + 1, and label {top} is at {where} "
        "(a typo? otherwise pass --num-classes)"
    )


def drop_duplicates(samples: SampleList) -> SampleList:
    """The same image listed twice: an error with two labels, else a warning and the later lines dropped."""
    if samples.paths is None:
        return samples
    first: dict[str, int] = {}
    dropped: list[int] = []
    for i, p in enumerate(samples.paths):
        key = str(Path(p))  # `a//b.jpg` and `a/b.jpg` are one file
        j = first.setdefault(key, i)
        if j == i:
            continue
        if samples.labels[i] != samples.labels[j]:
            raise SplitError(
                f"{samples.where(i)}: {p} is listed again with label {samples.labels[i]}, "
                f"but {samples.where(j)} gives it label {samples.labels[j]}"
            )
        dropped.append(i)
    if not dropped:
        return samples
    shown = "; ".join(f"{samples.where(i)} repeats {samples.paths[i]}" for i in dropped[:5])
    warnings.warn(
        f"{len(dropped)} duplicate line(s) dropped (same image, same label): {shown}"
        + (" ..." if len(dropped) > 5 else ""),
        SplitWarning,
        stacklevel=2,
    )
    keep = np.setdiff1d(np.arange(len(samples)), dropped)
    return samples.subset(keep)
