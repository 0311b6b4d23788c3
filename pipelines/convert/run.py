"""One conversion: read the split, check it, decode every image once over `workers` processes in a seeded
random order, stream both formats, write the meta, and move it all into --out in one step at the end."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import UnidentifiedImageError
from tqdm import tqdm

from ..meta import META_SUFFIX, DatasetMeta, write_meta
from .beton import BetonWriter, page_size_for
from .images import Encoded, EncodeOptions, encode_array, encode_bytes
from .readers import read_split
from .samples import SampleList, SplitRequest, check_empty_classes, check_labels, drop_duplicates
from .staging import Staging
from .wds import ShardWriter

FORMATS = ("ffcv", "dali")


class ConversionError(RuntimeError):
    """An image that cannot be converted (the message names the file and its line), or no image at all."""


@dataclass(frozen=True)
class ConvertOptions:
    formats: tuple[str, ...] = FORMATS
    max_resolution: int = 512
    jpeg_quality: int = 90
    workers: int = 0  # 0: one per available core
    seed: int = 0  # write order: numpy default_rng(seed).permutation of the split's samples
    shard_size: int = 10_000  # samples per DALI shard
    skip_bad: bool = False
    overwrite: bool = False
    allow_empty_classes: bool = False
    raw_max_pixels: int = 64 * 64  # FFCV stores images of at most this many pixels raw (CIFAR, tiny images)
    progress: bool = True

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"--formats: unknown {bad or 'empty list'}; valid: {', '.join(FORMATS)}")
        if len(set(self.formats)) != len(self.formats):
            raise ValueError(f"--formats lists a format twice: {','.join(self.formats)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"--jpeg-quality must be in 1..100, got {self.jpeg_quality}")
        if self.max_resolution < 0 or self.max_resolution > 65535:
            raise ValueError(f"--max-resolution must be in 0..65535 (0: no limit), got {self.max_resolution}")
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0 (0: all cores), got {self.workers}")

    def num_workers(self) -> int:
        if self.workers:
            return self.workers
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def encode_options(self) -> EncodeOptions:
        return EncodeOptions(
            self.max_resolution,
            self.jpeg_quality,
            "ffcv" in self.formats,
            "dali" in self.formats,
            self.raw_max_pixels,
        )


def output_names(stem: str) -> dict[str, str]:
    return {"ffcv": f"{stem}.beton", "dali": f"{stem}.dali", "meta": f"{stem}{META_SUFFIX}"}


def write_order(n: int, seed: int) -> np.ndarray:
    """Sample i of the output is sample `write_order(n, seed)[i]` of the (checked) split: lists are sorted by
    class, so a shuffled file gives mixed batches to sequential and buffer-shuffled readers alike."""
    return np.random.default_rng(seed).permutation(n)


# ---- per-sample work, in worker processes ------------------------------------------------------------
_ENCODE: EncodeOptions | None = None


def _init_worker(opts: EncodeOptions, in_process: bool = False) -> None:
    global _ENCODE
    _ENCODE = opts
    if not in_process:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle (it cleans up)
        # Pool.terminate() stops workers with SIGTERM: a Python-level handler inherited from the CLI can miss
        # a signal landing just before a blocking lock wait and leave the pool hanging; restore the default.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _encode_task(task: tuple[str, Any]) -> tuple[bool, Encoded | str]:
    kind, payload = task
    try:
        if kind == "array":
            return True, encode_array(np.asarray(payload), _ENCODE)
        with open(payload, "rb") as fh:
            data = fh.read()
        if not data:
            return False, "empty file"
        return True, encode_bytes(data, _ENCODE)
    except UnidentifiedImageError:
        return False, "not an image file (unrecognised format)"
    except Exception as exc:  # reported per sample: the main process skips it or stops with its name
        return False, f"{type(exc).__name__}: {exc}"


def _encoded_stream(tasks: Iterable[tuple[str, Any]], opts: EncodeOptions, workers: int, n: int) -> Iterator:
    if workers <= 1 or n < 2:
        _init_worker(opts, in_process=True)
        yield from map(_encode_task, tasks)
        return
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    chunksize = max(1, min(16, n // (workers * 8)))
    with mp.get_context(method).Pool(workers, initializer=_init_worker, initargs=(opts,)) as pool:
        yield from pool.imap(_encode_task, tasks, chunksize=chunksize)  # ordered: results in write order


# ---- orchestration ----------------------------------------------------------------------------------------
def _missing_files(samples: SampleList, workers: int) -> list[int]:
    """Indices of listed files that do not exist: checked up front, so a missing image fails in seconds."""
    root = str(samples.root or Path())
    paths = samples.paths

    def missing(lo: int) -> list[int]:
        return [
            i
            for i in range(lo, min(lo + 4096, len(paths)))
            if not os.path.isfile(os.path.join(root, paths[i]))
        ]

    with ThreadPoolExecutor(max(4, workers)) as ex:  # stat() is I/O bound (network file systems)
        return [i for part in ex.map(missing, range(0, len(paths), 4096)) for i in part]


def _precheck(samples: SampleList, opts: ConvertOptions, skipped: list[dict]) -> SampleList:
    check_labels(samples)
    samples = drop_duplicates(samples)
    if samples.paths is not None:
        missing = _missing_files(samples, opts.num_workers())
        if missing and not opts.skip_bad:
            shown = "; ".join(f"{samples.describe(i)} ({samples.where(i)})" for i in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ConversionError(
                f"{len(missing)} image(s) not found: {shown}{more} "
                "(--skip-bad converts the rest and lists them in the meta file)"
            )
        skipped += [_skip_record(samples, i, "file not found") for i in missing]
        samples = samples.subset(np.setdiff1d(np.arange(len(samples)), missing))
    if not len(samples):
        raise ConversionError(f"{samples.origin}: no image to convert")
    check_empty_classes(samples, opts.allow_empty_classes)
    return samples


def _skip_record(samples: SampleList, i: int, error: str) -> dict:
    return {"path": samples.display_path(i), "line": int(samples.lines[i]), "error": error}


def _tasks(samples: SampleList, order: np.ndarray) -> Iterator[tuple[str, Any]]:
    if samples.arrays is not None:
        for j in order:
            yield "array", samples.arrays[j]
    else:
        root = samples.root or Path()
        for j in order:
            yield "path", str(root / samples.paths[j])


def convert_samples(samples: SampleList, out: str | os.PathLike, opts: ConvertOptions) -> dict[str, Any]:
    """Convert a read split into --out; returns a summary (images, classes, bytes, seconds, images/s, ...)."""
    start = time.perf_counter()
    names = output_names(samples.stem)
    staging = Staging(out, samples.stem, [names["ffcv"], names["dali"], names["meta"]], opts.overwrite)
    try:
        summary = _convert(samples, staging, opts, names, start)
        staging.commit()
    finally:
        staging.abort()  # no-op after a commit
    return summary


@dataclass
class _Written:
    counts: np.ndarray
    skipped: list[dict]
    images: int = 0
    passthrough: int = 0


def _write_all(
    samples: SampleList, order: np.ndarray, opts: ConvertOptions, beton, shards, skipped
) -> _Written:
    """Encode every sample over the worker pool, in write order, and append it to both writers."""
    done = _Written(np.zeros(samples.num_classes, dtype=np.int64), skipped)
    bar = tqdm(
        total=len(order),
        unit="img",
        desc=samples.stem,
        disable=not opts.progress,
        file=sys.stderr,
        mininterval=0.5,
        smoothing=0.05,
    )
    stream = _encoded_stream(_tasks(samples, order), opts.encode_options(), opts.num_workers(), len(order))
    with closing(stream), bar:  # closing the stream terminates the pool, also on errors and Ctrl-C
        for j, (ok, result) in zip(order, stream, strict=True):
            if ok and beton is not None:
                problem = beton.refuse(result.width, result.height, len(result.ffcv_data))
                ok, result = (False, problem) if problem else (ok, result)
            if not ok:
                if not opts.skip_bad:
                    raise ConversionError(
                        f"cannot convert image {samples.describe(j)} ({samples.where(j)}): {result}"
                    )
                done.skipped.append(_skip_record(samples, j, result))
                bar.update()
                continue
            label = int(samples.labels[j])
            if beton is not None:
                beton.add(result.ffcv_mode, result.width, result.height, result.ffcv_data, label)
            if shards is not None:
                shards.add(f"{done.images:08d}", result.dali_bytes(), label)
            done.counts[label] += 1
            done.images += 1
            done.passthrough += result.passthrough
            bar.update()
    return done


def _convert(samples: SampleList, staging: Staging, opts: ConvertOptions, names: dict, start: float) -> dict:
    skipped: list[dict] = []
    samples = _precheck(samples, opts, skipped)
    order = write_order(len(samples), opts.seed)
    beton = shards = None
    try:
        if "ffcv" in opts.formats:
            beton = BetonWriter(staging.path(names["ffcv"]), len(samples), page_size_for(opts.max_resolution))
        if "dali" in opts.formats:
            shards = ShardWriter(staging.path(names["dali"]), opts.shard_size)
        done = _write_all(samples, order, opts, beton, shards, skipped)
        if beton is not None:
            beton.close()
        shard_names, per_shard = shards.close() if shards is not None else ([], [])
    finally:
        for w in (beton, shards):
            if w is not None:
                w.abort()  # a no-op after close()
    if not done.images:
        raise ConversionError(f"{samples.origin}: every image failed to convert ({len(skipped)} skipped)")
    check_empty_classes(_counts_only(samples, done.counts), opts.allow_empty_classes)

    formats: dict[str, dict] = {}
    ffcv_bytes = dali_bytes = 0
    if beton is not None:
        ffcv_bytes = staging.path(names["ffcv"]).stat().st_size
        formats["ffcv"] = {
            "file": names["ffcv"],
            "bytes": ffcv_bytes,
            "raw_max_pixels": opts.raw_max_pixels,
            "page_size": beton.page_size,
        }
    if shards is not None:
        dali_bytes = shards.bytes_written
        formats["dali"] = {
            "dir": names["dali"],
            "shards": shard_names,
            "samples_per_shard": per_shard,
            "bytes": dali_bytes,
            "passthrough_jpegs": done.passthrough,
        }
    meta = DatasetMeta(
        dataset=samples.dataset,
        split=samples.split,
        stem=samples.stem,
        num_classes=samples.num_classes,
        num_samples=done.images,
        class_counts=done.counts.tolist(),
        max_resolution=opts.max_resolution,
        jpeg_quality=opts.jpeg_quality,
        seed=opts.seed,
        formats=formats,
        skipped=skipped,
        class_names=samples.class_names,
        source=samples.origin,
        imb_ratio=samples.extra.get("imb_ratio"),
    )
    write_meta(meta, staging.path(names["meta"]))
    seconds = time.perf_counter() - start
    return {
        "stem": samples.stem,
        "dataset": samples.dataset,
        "split": samples.split,
        "images": done.images,
        "classes": samples.num_classes,
        "skipped": len(skipped),
        "ffcv_bytes": ffcv_bytes,
        "dali_bytes": dali_bytes,
        "passthrough": done.passthrough,
        "seconds": seconds,
        "images_per_s": done.images / seconds if seconds > 0 else float("inf"),
        "workers": opts.num_workers(),
        "out": str(staging.out),
        "formats": list(opts.formats),
    }


def _counts_only(samples: SampleList, counts: np.ndarray) -> SampleList:
    """A label-only stand-in with the given class counts, for the empty-class check after skipping."""
    labels = np.repeat(np.arange(samples.num_classes), counts)
    return SampleList(
        dataset=samples.dataset,
        split=samples.split,
        stem=samples.stem,
        origin=f"{samples.origin} (after skipping bad images)",
        labels=labels,
        lines=np.zeros(len(labels)),
        num_classes=samples.num_classes,
        arrays=np.zeros((len(labels), 0), np.uint8),
    )


def convert(request: SplitRequest, out: str | os.PathLike, opts: ConvertOptions) -> dict[str, Any]:
    """Read the split `request` names and convert it into `out`."""
    return convert_samples(read_split(request), out, opts)


def summary_line(s: dict[str, Any]) -> str:
    sizes = ", ".join(f"{f} {s[f + '_bytes'] / 1e6:.1f} MB" for f in s["formats"])
    skipped = f", {s['skipped']} skipped" if s["skipped"] else ""
    return (
        f"{s['stem']}: {s['images']} images, {s['classes']} classes{skipped} -> {sizes} in {s['out']}; "
        f"{s['seconds']:.1f} s, {s['images_per_s']:.0f} images/s ({s['workers']} workers)"
    )
