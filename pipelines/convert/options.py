"""What a conversion is asked to do: the CLI's options, checked when they are made (one line per error)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .images import EncodeOptions
from .outputs import FORMATS
from .progress import DEFAULT_INTERVAL


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
    raw_max_pixels: int = 64 * 64  # images of at most this many pixels: raw for FFCV, PNG for DALI (CIFAR)
    progress: bool = True
    progress_interval: float = DEFAULT_INTERVAL  # seconds between log lines when stderr is not a terminal

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
        if not self.progress_interval >= 0:
            raise ValueError(f"--progress-interval must be >= 0 seconds, got {self.progress_interval}")

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
