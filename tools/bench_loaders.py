"""Loader throughput: `make_loader` (ffcv, dali) against the raw libraries doing the same work, and a
torchvision ImageFolder DataLoader, on the same images in one run.

    python -m tools.bench_loaders --images 2400 --size 400x350 --res 224 --batch 64 --workers 2 --repeats 3

Same training-mode work for every loader (tools/loader_adapters.py; method in docs/BENCHMARKS.md,
"Loaders"): one warm-up epoch each, then --repeats timed epochs interleaved; `img_per_cpu_s` divides by the
loader's own CPU time, which other load distorts far less than wall time. `run(...)` returns a dict.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from pipelines import data_path
from pipelines.convert import ConvertOptions, SplitRequest, convert
from pipelines.meta import META_SUFFIX
from tools.loader_adapters import RawDali, TorchvisionFolder, fastlt, raw_ffcv
from tools.make_demo_data import make_demo_data, parse_size
from tools.output import add_json_flag, record, write_json

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("fastlt_ffcv", "raw_ffcv", "fastlt_dali", "raw_dali", "torchvision")
# Not in the default set: DBM-BCL's three views of each image, against the one-view loaders.
VIEW_NAMES = ("fastlt_ffcv_3views", "fastlt_dali_3views")


def prepare_data(data: Path, n_images: int, size: tuple[int, int], workers: int) -> Path:
    """Demo images (12 equal classes) and their conversion; reused when `data` already holds them."""
    images = data / "images"
    if not (images / "train.txt").is_file():
        make_demo_data(
            images,
            num_classes=12,
            n_max=max(1, n_images // 12),
            imbalance=1.0,
            test_per_class=1,
            size=size,
            seed=0,
            workers=workers,
        )
    converted = data / "converted"
    if not (converted / f"train{META_SUFFIX}").is_file():
        request = SplitRequest("imagenet_lt", images, split_file=images / "train.txt")
        convert(request, converted, ConvertOptions(workers=workers, progress=False))
    return converted


def _cpu_seconds(loader) -> float:
    """CPU time of this process (all its threads) plus the loader's worker processes, if any."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pid in loader.worker_pids() if hasattr(loader, "worker_pids") else []:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def _epoch(loader, device: torch.device) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds) of one epoch."""
    start, cpu = time.perf_counter(), _cpu_seconds(loader)
    n = 0
    for batch in loader:
        n += batch[0].shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n, time.perf_counter() - start, _cpu_seconds(loader) - cpu


def run(
    data: Path = ROOT / "bench_out" / "loaders_data",
    n_images: int = 2400,
    size: tuple[int, int] = (400, 350),
    res: int = 224,
    batch: int = 64,
    workers: int = 2,
    repeats: int = 3,
    device: str = "cpu",
    only: Iterable[str] = NAMES,
) -> dict:
    dev = torch.device(device)
    converted = prepare_data(Path(data), n_images, size, workers)
    beton, shards = data_path(converted, "train", "ffcv"), data_path(converted, "train", "dali")
    builders: dict[str, Callable[[], object]] = {
        "fastlt_ffcv": lambda: fastlt("ffcv", converted, res, batch, workers, dev),
        "raw_ffcv": lambda: raw_ffcv(beton, res, batch, workers, dev),
        "fastlt_dali": lambda: fastlt("dali", converted, res, batch, workers, dev),
        "raw_dali": lambda: RawDali(shards, res, batch, workers, dev),
        "torchvision": lambda: TorchvisionFolder(Path(data) / "images", res, batch, workers, dev),
        "fastlt_ffcv_3views": lambda: fastlt("ffcv", converted, res, batch, workers, dev, views=3),
        "fastlt_dali_3views": lambda: fastlt("dali", converted, res, batch, workers, dev, views=3),
    }
    unknown = set(only) - set(builders)
    if unknown:
        raise ValueError(f"unknown loader(s) {sorted(unknown)}; choose from {list(builders)}")
    loaders, warmup, times = {}, {}, {name: [] for name in only}
    for name in only:
        start = time.perf_counter()
        loaders[name] = builders[name]()
        _epoch(loaders[name], dev)
        warmup[name] = time.perf_counter() - start
    for _ in range(repeats):
        for name in only:  # interleaved: a burst of load from elsewhere hits every loader alike
            times[name].append(_epoch(loaders[name], dev))
    results = {}
    for name in only:
        n = times[name][0][0]
        median = statistics.median(s for _, s, _ in times[name])
        cpu = statistics.median(c for _, _, c in times[name])
        results[name] = {
            "images_per_epoch": n,
            "epoch_s": [round(s, 3) for _, s, _ in times[name]],
            "img_per_s": round(n / median, 1),
            "best_img_per_s": round(n / min(s for _, s, _ in times[name]), 1),
            "img_per_s_per_core": round(n / median / workers, 1),
            "img_per_cpu_s": round(n / cpu, 1) if cpu > 0 else None,
            "warmup_s": round(warmup[name], 1),
        }
    for backend in ("ffcv", "dali"):
        ours, raw = results.get(f"fastlt_{backend}"), results.get(f"raw_{backend}")
        if ours and raw:
            results[f"ratio_{backend}"] = round(ours["img_per_s"] / raw["img_per_s"], 3)
            results[f"best_ratio_{backend}"] = round(ours["best_img_per_s"] / raw["best_img_per_s"], 3)
            if ours["img_per_cpu_s"] and raw["img_per_cpu_s"]:
                results[f"cpu_ratio_{backend}"] = round(ours["img_per_cpu_s"] / raw["img_per_cpu_s"], 3)
        three = results.get(f"fastlt_{backend}_3views")
        if ours and three:  # source images per second with three views each, against one view
            results[f"views3_ratio_{backend}"] = round(three["img_per_s"] / ours["img_per_s"], 3)
    for loader in loaders.values():
        if hasattr(loader, "close"):
            loader.close()
    return {
        "config": dict(
            n_images=n_images,
            size=list(size),
            res=res,
            batch=batch,
            workers=workers,
            repeats=repeats,
            device=str(dev),
        ),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # the machine's other load: wall times depend on it
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "bench_out" / "loaders_data")
    p.add_argument("--images", type=int, default=2400, help="training images to generate (12 equal classes)")
    p.add_argument("--size", type=parse_size, default=(400, 350), help="WIDTHxHEIGHT of the generated JPEGs")
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="threads / worker processes per loader"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per loader (median reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--only", default=",".join(NAMES), help=f"comma-separated subset of {','.join(NAMES + VIEW_NAMES)}"
    )
    add_json_flag(p)
    args = p.parse_args(argv)
    out = run(
        args.data,
        args.images,
        args.size,
        args.res,
        args.batch,
        args.workers,
        args.repeats,
        args.device,
        [s for s in args.only.split(",") if s],
    )
    print(json.dumps(out, indent=1))
    write_json(args.json, record(out, args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
