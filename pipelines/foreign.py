"""Data fastlt did not convert (a `.beton` from FFCV's own writer, a folder of WebDataset shards): its meta.

Such data has no `<stem>.meta.json`, so `dataset_meta` counts one from the labels its backend reads
(`Backend.read_labels`), and data without index files gets them from its backend (`Backend.index_dir`:
DALI's `wds2idx` for shards). Both go to a cache, never beside the data, which may be read-only:
`<cache>/counts/<key>.json` and `<cache>/wds-index/<key>/<shard>.idx`, `<cache>` being `data.cache_dir`,
else `$XDG_CACHE_HOME/fastlt`, else `~/.cache/fastlt`. The key hashes the data's resolved path and every
file's size and mtime (and the label field), so changed data is counted again. Every file appears
atomically (a rename): ranks opening the same data at once, or a crash, never leave a partial one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .backends import BACKENDS
from .config import DataConfig
from .errors import DataError
from .fileio import atomic_write_text
from .meta import FOREIGN, DatasetMeta, MetaError, counted_meta, meta_path_for, read_meta
from .shard_index import TAR_BLOCK, ShardError, tar_files

log = logging.getLogger(__name__)


def cache_root(setting: str = "") -> Path:
    """`data.cache_dir`, else `$XDG_CACHE_HOME/fastlt`, else `~/.cache/fastlt`."""
    if setting:
        return Path(setting).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastlt"


def fingerprint(path: Path) -> list:
    """What identifies the data's content cheaply: its resolved path and the size and mtime (ns) of the file,
    or of every shard of the folder."""
    files = [path] if path.is_file() else tar_files(path)
    return [str(path.resolve()), [[f.name, (st := f.stat()).st_size, st.st_mtime_ns] for f in files]]


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def dataset_meta(cfg: DataConfig, path: Path, split: str) -> tuple[DatasetMeta, Path | None]:
    """(meta, index folder) for the data at `path`: its meta file when it has one (index files beside the
    shards), else a meta counted from its labels and, for shards without index files, the cached ones."""
    if meta_path_for(path).is_file():
        meta = read_meta(path)
        if cfg.num_classes and cfg.num_classes != meta.num_classes:
            raise MetaError(
                f"data.num_classes = {cfg.num_classes}, but {meta_path_for(path)} says {meta.num_classes}"
            )
        return meta, None
    backend = BACKENDS[cfg.backend]
    backend.check_path(path)
    root = cache_root(cfg.cache_dir)
    index_dir = backend.index_dir(path, root)
    counts, cached = class_counts(cfg, path, root, index_dir)
    if cfg.num_classes:
        if len(counts) > cfg.num_classes:  # counts cached before data.num_classes was set
            raise MetaError(
                f"{path}: holds labels up to {len(counts) - 1}, but data.num_classes = {cfg.num_classes}"
            )
        counts = np.pad(counts, (0, cfg.num_classes - len(counts)))
    empty = np.flatnonzero(counts == 0)
    if split == "train" and len(empty):  # the losses' class priors and margins need every class
        c, given = int(empty[0]), f"data.num_classes = {cfg.num_classes}" if cfg.num_classes else "its labels"
        raise MetaError(
            f"{path}: class {c} has no training sample ({len(empty)} of {len(counts)} classes are empty, "
            f"counted from {given}); check its labels or data.num_classes"
        )
    stem = path.name.removesuffix(backend.suffix)
    formats = {cfg.backend: backend.format_entry(path, cfg, index_dir), FOREIGN: {"counts": str(cached)}}
    return counted_meta(counts, split=split, stem=stem, source=str(path), formats=formats), index_dir


def class_counts(cfg: DataConfig, path: Path, root: Path, index_dir: Path | None) -> tuple[np.ndarray, Path]:
    """(per-class counts, cache file): read from the cache when it holds this data's, else one pass over
    the labels, then cached."""
    fp = fingerprint(path)
    cached = root / "counts" / f"{_key('counts', cfg.backend, cfg.label_field, fp)}.json"
    counts = _read_counts(cached, fp)
    if counts is not None:
        return counts, cached
    labels = BACKENDS[cfg.backend].read_labels(path, cfg, index_dir)  # an error names a negative label
    if not len(labels):
        raise DataError(f"{path}: holds no samples")
    check_label_range(labels, path, cfg.num_classes)
    counts = np.bincount(labels)
    record = {
        "data": fp[0],
        "fingerprint": fp,
        "label_field": cfg.label_field,
        "class_counts": counts.tolist(),
    }
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cached, json.dumps(record) + "\n")
    except OSError as exc:  # the counts are known: a cache that cannot be written only costs time
        log.warning("cannot cache the class counts of %s in %s (%s); set data.cache_dir", path, cached, exc)
    return counts, cached


MAX_INFERRED_CLASSES = 1 << 20  # without data.num_classes, a larger label is taken for a typo


def check_label_range(labels: np.ndarray, path: Path, num_classes: int) -> None:
    """Every label below `data.num_classes` (unset: below MAX_INFERRED_CLASSES), checked before a per-class
    array is made: a typo like 3000000000 would otherwise cost gigabytes before any message."""
    bound = num_classes or MAX_INFERRED_CLASSES
    top = int(np.argmax(labels))
    if labels[top] < bound:
        return
    if num_classes:
        raise MetaError(
            f"{path}: sample {top} has label {labels[top]}, but data.num_classes = {num_classes} "
            f"(labels 0..{num_classes - 1})"
        )
    raise MetaError(
        f"{path}: sample {top} has label {labels[top]}, more than {MAX_INFERRED_CLASSES} classes: a typo? "
        "If not, set data.num_classes"
    )


def _read_counts(cached: Path, fp: list) -> np.ndarray | None:
    try:
        record = json.loads(cached.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable class-count cache (%s); counting again", cached, exc)
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != fp:
        return None
    counts = record.get("class_counts")
    if not isinstance(counts, list) or not counts:
        return None
    if not all(isinstance(c, int) and c >= 0 for c in counts):
        return None
    return np.asarray(counts, np.int64)


def shard_indexes(folder: Path, root: Path) -> Path | None:
    """None when every shard of `folder` has its index beside it; else the cache folder holding an index
    for each, made by DALI's `wds2idx` on first use."""
    tars = tar_files(folder)
    if not tars:
        raise ShardError(f"{folder}: no .tar shards in this folder")
    if all(t.with_suffix(".idx").is_file() for t in tars):
        return None
    out = root / "wds-index" / _key("wds-index", fingerprint(folder))
    if out.is_dir():
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    except OSError as exc:
        raise DataError(
            f"{folder}: its shards have no index files and the cache folder {out.parent} cannot hold them "
            f"({exc}); set data.cache_dir to a writable folder"
        ) from None
    try:
        log.info("%s: indexing %d shards with DALI's wds2idx into %s", folder, len(tars), out)
        for tar in tars:
            make_index(tar, tmp / f"{tar.stem}.idx")
        try:
            tmp.rename(out)
        except OSError:
            if not out.is_dir():  # another process made the same folder first: use theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def make_index(tar: Path, idx: Path) -> None:
    """Index one shard with the `IndexCreator` DALI ships (its `wds2idx` command) into `idx`."""
    try:
        from wds2idx import IndexCreator
    except ImportError as exc:  # pragma: no cover - environment problem
        raise ImportError(f"indexing {tar} needs DALI's wds2idx (nvidia-dali): {exc}") from exc
    try:
        with IndexCreator(str(tar), str(idx), verbose=False) as creator:
            creator.create_index()
    except (OSError, ValueError) as exc:
        raise ShardError(f"{tar}: DALI's wds2idx cannot index this shard: {exc}") from None
    _check_archive_end(tar, idx)


def _check_archive_end(tar: Path, idx: Path) -> None:
    """A tar cut short between two members still lists (wds2idx ignores `tar`'s complaint): a whole one has
    a block after its last member's data (the end-of-archive marker, or another member's header)."""
    row = idx.read_text().splitlines()[-1].split()
    end = max(int(row[k + 1]) + int(row[k + 2]) for k in range(0, len(row), 4))
    if tar.stat().st_size < -(-end // TAR_BLOCK) * TAR_BLOCK + TAR_BLOCK:
        raise ShardError(
            f"{tar}: truncated or corrupt shard: it ends after member {row[3]!r} without the end-of-archive "
            "block a whole tar has"
        )
