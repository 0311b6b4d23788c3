"""Throughput of the training step: (b) on synthetic batches already on the device, per step mode, and (c) end
to end through `make_loader`, reported as a fraction of (b) with the same mode: the pipeline's headroom.

    python -m trainer.bench step --arch resnet50 --resolution 224 --batch 256 --device cuda
    python -m trainer.bench e2e --data bench_out/imagenet_like/train --backends ffcv,dali --device cuda

Honest timing: warm-up (JIT, compile, capture) runs before the clock starts; GPU time comes from CUDA events
around the timed steps with one synchronisation at the end; every comparison runs in this one process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from losses import build_loss
from pipelines import DataConfig, make_loader, read_meta
from trainer.config import ModelConfig, OptimConfig, StepConfig
from trainer.models import build_model
from trainer.optim import build_optimizer
from trainer.step import TrainStep

MODES = ("eager", "compile", "graph")


class Timer:
    """Wall time on a CPU, CUDA events on a GPU (one synchronisation, at `stop`)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        if self.cuda:
            self._begin = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._begin.record()
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> float:
        """Seconds since `start`."""
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            return self._begin.elapsed_time(self._end) / 1e3
        return time.perf_counter() - self._t0


def make_step(
    arch: str,
    num_classes: int,
    class_counts: list[int],
    mode: str,
    device: torch.device,
    loss: str,
    seed: int = 0,
) -> TrainStep:
    """A TrainStep as the trainer builds it (same init for every mode thanks to the seed)."""
    torch.manual_seed(seed)
    loss_fn = build_loss(loss, class_counts).to(device)
    model = build_model(
        ModelConfig(arch=arch),
        loss_fn,
        num_classes=num_classes,
        class_counts=class_counts,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    ).to(device)
    optimizer = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=5e-4))
    return TrainStep(model, loss_fn, optimizer, StepConfig(mode=mode))


def synthetic_batch(batch: int, resolution: int, num_classes: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, resolution, resolution), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    return images.to(device).contiguous(memory_format=torch.channels_last), labels.to(device)


def _timed(
    step: TrainStep, batches: Iterable, warmup: int, steps: int, device: torch.device
) -> dict[str, float]:
    """Run `warmup` untimed steps, then time `steps` steps; returns images/s and ms per step."""
    it: Iterator = iter(batches)
    for _ in range(warmup):
        step(*next(it))
    step.read_metrics()  # a sync point: warm-up work is finished before the clock starts
    timer = Timer(device)
    n_images = 0
    timer.start()
    for _ in range(steps):
        images, labels = next(it)
        step(images, labels)
        n_images += images.shape[0]
    seconds = timer.stop()
    loss = step.read_metrics()["loss"]
    return {"img_per_s": n_images / seconds, "ms_per_step": 1e3 * seconds / steps, "loss": loss}


def _repeat(batch):
    while True:
        yield batch


def bench_step(
    arch: str,
    resolution: int,
    batch: int,
    num_classes: int,
    modes: Iterable[str],
    device: str,
    warmup: int,
    steps: int,
    loss: str = "ce",
) -> list[dict[str, Any]]:
    """(b): the step alone on one device-resident synthetic batch, for each mode, in this process."""
    dev = torch.device(device)
    counts = [max(1, int(1280 * (0.004 ** (c / max(1, num_classes - 1))))) for c in range(num_classes)]
    data = synthetic_batch(batch, resolution, num_classes, dev)
    rows = []
    for mode in modes:
        step = make_step(arch, num_classes, counts, mode, dev, loss)
        start = time.perf_counter()
        result = _timed(step, _repeat(data), warmup, steps, dev)
        rows.append(
            {
                "bench": "step",
                "arch": arch,
                "resolution": resolution,
                "batch": batch,
                "mode": mode,
                "effective_mode": step.mode,
                "device": str(dev),
                "loss_name": loss,
                "wall_s_incl_warmup": time.perf_counter() - start,
                **result,
            }
        )
    base = next((r["img_per_s"] for r in rows if r["mode"] == "eager"), None)
    for r in rows:
        r["vs_eager"] = r["img_per_s"] / base if base else None
    return rows


@contextmanager
def _loader(backend: str, stem: Path, batch: int, resolution: int, device: torch.device, workers: int):
    cfg = DataConfig(
        backend=backend,
        dir=str(stem.parent),
        train=stem.name,
        resolution=resolution,
        batch_size=batch,
        num_workers=workers,
    )
    loader = make_loader(cfg, "train", device=device)
    try:
        yield loader
    finally:
        loader.close()


def _epochs(loader) -> Iterator:
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def bench_e2e(
    stem: Path,
    backends: Iterable[str],
    arch: str,
    resolution: int,
    batch: int,
    mode: str,
    device: str,
    workers: int,
    warmup: int,
    steps: int,
    loss: str = "ce",
) -> list[dict[str, Any]]:
    """(c): training fed by each backend, against (b) with the same model, mode and batch in this process."""
    dev = torch.device(device)
    meta = read_meta(f"{stem}.meta.json")
    counts = list(meta.class_counts)
    synthetic = bench_step(arch, resolution, batch, meta.num_classes, [mode], device, warmup, steps, loss)[0]
    rows = [synthetic]
    for backend in backends:
        with _loader(backend, stem, batch, resolution, dev, workers) as loader:
            # A full first pass warms FFCV's JIT and DALI's pipeline before any step is timed.
            for _ in loader:
                pass
            step = make_step(arch, meta.num_classes, counts, mode, dev, loss)
            result = _timed(step, _epochs(loader), warmup, steps, dev)
        rows.append(
            {
                "bench": "e2e",
                "backend": backend,
                "arch": arch,
                "resolution": resolution,
                "batch": batch,
                "mode": mode,
                "effective_mode": step.mode,
                "device": str(dev),
                "workers": workers,
                **result,
                "fraction_of_synthetic": result["img_per_s"] / synthetic["img_per_s"],
                "img_per_s_per_worker": result["img_per_s"] / max(1, workers),
            }
        )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'bench':<6} {'backend':<9} {'arch':<14} {'res':>4} {'batch':>5} {'mode':<8} {'img/s':>9} "
        f"{'ms/step':>8} {'ratio':>7}"
    ]
    for r in rows:
        ratio = r.get("vs_eager") if r["bench"] == "step" else r.get("fraction_of_synthetic")
        lines.append(
            f"{r['bench']:<6} {r.get('backend', 'synthetic'):<9} {r['arch']:<14} {r['resolution']:>4} "
            f"{r['batch']:>5} {r['effective_mode']:<8} {r['img_per_s']:>9.1f} {r['ms_per_step']:>8.1f} "
            f"{'' if ratio is None else f'{ratio:.2f}x':>7}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", choices=("step", "e2e"))
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--classes", type=int, default=1000, help="step: number of classes")
    p.add_argument("--modes", default=",".join(MODES), help="step: comma-separated step modes")
    p.add_argument("--mode", default="graph", help="e2e: the step mode")
    p.add_argument("--loss", default="ce")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", type=Path, help="e2e: split stem, e.g. bench_out/imagenet_like/train")
    p.add_argument("--backends", default="ffcv,dali")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    if args.which == "step":
        rows = bench_step(
            args.arch,
            args.resolution,
            args.batch,
            args.classes,
            args.modes.split(","),
            args.device,
            args.warmup,
            args.steps,
            args.loss,
        )
    else:
        if args.data is None:
            p.error("e2e needs --data STEM (a converted split: STEM.beton / STEM.dali / STEM.meta.json)")
        rows = bench_e2e(
            args.data,
            args.backends.split(","),
            args.arch,
            args.resolution,
            args.batch,
            args.mode,
            args.device,
            args.workers,
            args.warmup,
            args.steps,
            args.loss,
        )
    print(format_rows(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
