"""One conversion: read the split, check it, decode every image once over `workers` processes in a seeded
random order, stream both formats, write the meta, and move it all into --out in one step at the end."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..meta import DatasetMeta, write_meta
from .beton import BetonWriter, page_size_for
from .images import DALI_JPG, DALI_PNG, FFCV_JPG, FFCV_RAW
from .options import ConvertOptions
from .outputs import OutputPlan, SampleDigest, check_kept, merged_formats, output_names, plan_outputs
from .pool import encoded_stream
from .progress import progress
from .readers import read_split
from .samples import (
    SampleList,
    SplitRequest,
    check_empty_classes,
    check_labels,
    class_count_hint,
    drop_duplicates,
)
from .staging import Staging, check_out, naming, sweep_partials
from .wds import ShardWriter

__all__ = [
    "ConversionError",
    "WriteError",
    "ConvertOptions",
    "convert",
    "convert_samples",
    "output_names",
    "summary_line",
]
Notify = Callable[[str], None]
# What the meta's per-format `encoding` says: "raw" and "png" are the exact pixels, "jpeg" is lossy; a
# conversion whose samples differ ("jpeg+raw": tiny and large images in one split) lists both, sorted.
FFCV_ENCODING = {FFCV_RAW: "raw", FFCV_JPG: "jpeg"}
DALI_ENCODING = {DALI_PNG: "png", DALI_JPG: "jpeg"}


class ConversionError(RuntimeError):
    """An image that cannot be converted (the message names the file and its line), or no image at all."""


class WriteError(ConversionError):
    """An output could not be written (a full disk, ...): names the file, says --out was left as it was."""


def write_order(n: int, seed: int) -> np.ndarray:
    """Sample i of the output is sample `write_order(n, seed)[i]` of the (checked) split: lists are sorted by
    class, so a shuffled file gives mixed batches to sequential and buffer-shuffled readers alike."""
    return np.random.default_rng(seed).permutation(n)


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
    counts = samples.class_counts()
    check_empty_classes(counts, samples.origin, opts.allow_empty_classes, class_count_hint(samples))
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


def convert_samples(
    samples: SampleList, out: str | os.PathLike, opts: ConvertOptions, notify: Notify | None = None
) -> dict[str, Any]:
    """Convert a read split into --out; returns a summary (images, classes, bytes, seconds, images/s, ...).
    `notify` gets one line for each existing output replaced or kept and each stale partial folder."""
    start = time.perf_counter()
    say = notify or (lambda line: None)
    check_out(Path(out))
    for line in sweep_partials(Path(out), samples.stem):  # what SIGKILLed conversions left behind
        say(line)
    plan = plan_outputs(Path(out), samples.stem, opts.formats, opts.overwrite)
    skipped: list[dict] = []
    samples = _precheck(samples, opts, skipped)
    check_kept(plan, _early_facts(samples, opts))  # before hours of decoding
    staging = Staging(out, samples.stem, plan.write)
    if plan.notice(samples.stem):
        say(plan.notice(samples.stem))
    try:
        try:
            summary = _convert(samples, staging, plan, opts, skipped, start)
        except OSError as exc:
            where = staging.final(exc.filename) if exc.filename else staging.out
            raise WriteError(
                f"cannot write {where}: {exc.strerror or exc}; {staging.out} was left as it was"
            ) from None
        staging.commit()
    finally:
        staging.abort()  # no-op after a commit
    return summary


def _early_facts(samples: SampleList, opts: ConvertOptions) -> dict[str, Any]:
    return {
        "seed": opts.seed,
        "max_resolution": opts.max_resolution,
        "jpeg_quality": opts.jpeg_quality,
        "num_classes": samples.num_classes,
    }


@dataclass
class _Written:
    counts: np.ndarray
    skipped: list[dict]
    images: int = 0
    passthrough: int = 0
    ffcv_encodings: set[str] = field(default_factory=set)
    dali_encodings: set[str] = field(default_factory=set)
    digest: SampleDigest = field(default_factory=SampleDigest)


def _write_all(
    samples: SampleList, order: np.ndarray, opts: ConvertOptions, beton, shards, skipped
) -> _Written:
    """Encode every sample over the worker pool, in write order, and append it to both writers."""
    done = _Written(np.zeros(samples.num_classes, dtype=np.int64), skipped)
    bar = progress(len(order), samples.stem, opts.progress, opts.progress_interval)
    stream = encoded_stream(_tasks(samples, order), opts.encode_options(), opts.num_workers(), len(order))
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
                done.ffcv_encodings.add(FFCV_ENCODING[result.ffcv_mode])
            if shards is not None:
                shards.add(f"{done.images:08d}", result.dali_bytes(), label, result.dali_ext)
                done.dali_encodings.add(DALI_ENCODING[result.dali_ext])
            done.counts[label] += 1
            done.images += 1
            done.passthrough += result.passthrough
            done.digest.add(samples.key(j), label)
            bar.update()
    return done


def _convert(
    samples: SampleList, staging: Staging, plan: OutputPlan, opts: ConvertOptions, skipped, start: float
) -> dict:
    names = plan.names
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
    origin = f"{samples.origin} (after skipping bad images)"
    check_empty_classes(done.counts, origin, opts.allow_empty_classes, class_count_hint(samples))
    digest = done.digest.hexdigest()
    check_kept(plan, {"num_samples": done.images, "class_counts": done.counts.tolist()}, digest)

    written: dict[str, dict] = {}
    if beton is not None:
        written["ffcv"] = {
            "file": names["ffcv"],
            "bytes": staging.path(names["ffcv"]).stat().st_size,
            "raw_max_pixels": opts.raw_max_pixels,
            "page_size": beton.page_size,
            "encoding": "+".join(sorted(done.ffcv_encodings)),
            "samples_digest": digest,
        }
    if shards is not None:
        written["dali"] = {
            "dir": names["dali"],
            "shards": shard_names,
            "samples_per_shard": per_shard,
            "bytes": shards.bytes_written,
            "passthrough_jpegs": done.passthrough,
            "encoding": "+".join(sorted(done.dali_encodings)),
            "samples_digest": digest,
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
        formats=merged_formats(plan, written),
        skipped=skipped,
        class_names=samples.class_names,
        source=samples.origin,
        imb_ratio=samples.extra.get("imb_ratio"),
    )
    meta_path = staging.path(names["meta"])
    with naming(meta_path):
        write_meta(meta, meta_path)
    seconds = time.perf_counter() - start
    return {
        "stem": samples.stem,
        "dataset": samples.dataset,
        "split": samples.split,
        "images": done.images,
        "classes": samples.num_classes,
        "skipped": len(skipped),
        "ffcv_bytes": written.get("ffcv", {}).get("bytes", 0),
        "dali_bytes": written.get("dali", {}).get("bytes", 0),
        "passthrough": done.passthrough,
        "seconds": seconds,
        "images_per_s": done.images / seconds if seconds > 0 else float("inf"),
        "workers": opts.num_workers(),
        "out": str(staging.out),
        "formats": list(opts.formats),
        "replaced": [str(p) for p in plan.replaced],
        "kept": [str(p) for p in plan.kept_paths()],
    }


def convert(
    request: SplitRequest, out: str | os.PathLike, opts: ConvertOptions, notify: Notify | None = None
) -> dict[str, Any]:
    """Read the split `request` names and convert it into `out`."""
    return convert_samples(read_split(request), out, opts, notify)


def summary_line(s: dict[str, Any]) -> str:
    sizes = ", ".join(f"{f} {s[f + '_bytes'] / 1e6:.1f} MB" for f in s["formats"])
    skipped = f", {s['skipped']} skipped" if s["skipped"] else ""
    kept = f" (kept {', '.join(Path(k).name for k in s['kept'])})" if s.get("kept") else ""
    return (
        f"{s['stem']}: {s['images']} images, {s['classes']} classes{skipped} -> {sizes} in {s['out']}{kept}; "
        f"{s['seconds']:.1f} s, {s['images_per_s']:.0f} images/s ({s['workers']} workers)"
    )
