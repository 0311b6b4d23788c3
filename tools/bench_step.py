"""Throughput of the training step: (b) on synthetic batches already on the device, per step mode, and (c) end
to end through `make_loader`, reported as a fraction of (b) with the same mode: the pipeline's headroom.

    python -m tools.bench_step step --arch resnet50 --resolution 224 --batch 256 --device cuda
    python -m tools.bench_step e2e --data bench_out/imagenet_like/train --backends ffcv,dali --device cuda

The step is built by `trainer.build.build_parts`, as a run builds it, with the config's defaults otherwise.
Timing (tools/timer.py): warm-up (JIT, compile, capture) runs off the clock; GPU time comes from CUDA events
around the timed steps with one synchronisation at the end; every comparison runs in this one process.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from losses import LossConfig
from pipelines import DataConfig, make_loader, read_meta
from tools.longtail import LongTailMeta, imagenet_lt_meta
from tools.output import add_json_flag, record, write_json
from tools.timer import Timer
from trainer.build import build_parts
from trainer.config import Config, ModelConfig, RunConfig, StepConfig
from trainer.step import TrainStep

MODES = ("eager", "compile", "graph")


@dataclass(frozen=True)
class StepBench:
    """What every measured step shares: the model, its input, the loss, the device and the step counts."""

    arch: str = "resnet50"
    resolution: int = 224
    batch: int = 256
    loss: str = "ce"
    device: str = "cpu"
    warmup: int = 5
    steps: int = 20

    def make_step(self, meta: Any, mode: str, seed: int = 0) -> TrainStep:
        """The TrainStep a run with this model, loss, batch and mode trains with (`meta`: the class counts);
        seeded, so every mode starts from the same weights."""
        cfg = Config(
            run=RunConfig(seed=seed),
            data=DataConfig(batch_size=self.batch),
            model=ModelConfig(arch=self.arch),
            loss=LossConfig(name=self.loss),
            step=StepConfig(mode=mode),
        )
        return build_parts(cfg, meta, device=self.device).train_step

    def time(self, step: TrainStep, batches: Iterator) -> dict[str, float]:
        """images/s and ms per step over `steps` steps after `warmup` untimed ones, and their mean loss."""

        def one() -> None:
            step(*next(batches))

        timer = Timer(self.device)
        timer.warm_up(one, self.warmup)
        step.read_metrics()  # leaves the warm-up steps out of the loss
        seconds = timer.per_call(one, self.steps)
        loss = step.read_metrics()["loss"]
        return {"img_per_s": self.batch / seconds, "ms_per_step": 1e3 * seconds, "loss": loss}

    def row(self, bench: str, mode: str, step: TrainStep, **figures: Any) -> dict[str, Any]:
        return {
            "bench": bench,
            "arch": self.arch,
            "resolution": self.resolution,
            "batch": self.batch,
            "mode": mode,
            "effective_mode": step.mode,
            "device": self.device,
            "loss_name": self.loss,
            **figures,
        }


def synthetic_batch(batch: int, resolution: int, num_classes: int, device: torch.device | str):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, resolution, resolution), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    return images.to(device).contiguous(memory_format=torch.channels_last), labels.to(device)


def _repeat(batch):
    while True:
        yield batch


def bench_step(
    bench: StepBench, modes: Iterable[str], class_counts: Sequence[int] | None = None, num_classes: int = 1000
) -> list[dict[str, Any]]:
    """(b): the step alone on one device-resident synthetic batch, for each mode, in this process. Without
    `class_counts`, `num_classes` counts spread over ImageNet-LT's range (tools/longtail.py)."""
    meta = imagenet_lt_meta(num_classes) if class_counts is None else LongTailMeta(tuple(class_counts))
    data = synthetic_batch(bench.batch, bench.resolution, meta.num_classes, bench.device)
    rows = []
    for mode in modes:
        step = bench.make_step(meta, mode)
        start = time.perf_counter()
        result = bench.time(step, _repeat(data))
        rows.append(bench.row("step", mode, step, wall_s_incl_warmup=time.perf_counter() - start, **result))
    base = next((r["img_per_s"] for r in rows if r["mode"] == "eager"), None)
    for r in rows:
        r["vs_eager"] = r["img_per_s"] / base if base else None
    return rows


def _epochs(loader) -> Iterator:
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def bench_e2e(
    bench: StepBench, stem: Path, backends: Iterable[str], mode: str, workers: int
) -> list[dict[str, Any]]:
    """(c): training fed by each backend, against (b) with the same model, mode and batch in this process."""
    meta = read_meta(stem)  # the meta beside the bare stem
    synthetic = bench_step(bench, [mode], meta.class_counts)[0]
    rows = [synthetic]
    for backend in backends:
        cfg = DataConfig(
            backend=backend,
            dir=str(stem.parent),
            train=stem.name,
            resolution=bench.resolution,
            batch_size=bench.batch,
            num_workers=workers,
        )
        with closing(make_loader(cfg, "train", device=bench.device)) as loader:
            # A full first pass warms FFCV's JIT and DALI's pipeline before any step is timed.
            for _ in loader:
                pass
            step = bench.make_step(meta, mode)
            result = bench.time(step, _epochs(loader))
        rows.append(
            bench.row(
                "e2e",
                mode,
                step,
                backend=backend,
                workers=workers,
                **result,
                fraction_of_synthetic=result["img_per_s"] / synthetic["img_per_s"],
                img_per_s_per_worker=result["img_per_s"] / max(1, workers),
            )
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
    add_json_flag(p)
    args = p.parse_args(argv)
    bench = StepBench(args.arch, args.resolution, args.batch, args.loss, args.device, args.warmup, args.steps)
    if args.which == "step":
        rows = bench_step(bench, args.modes.split(","), num_classes=args.classes)
    else:
        if args.data is None:
            p.error("e2e needs --data STEM (a converted split: STEM.beton / STEM.dali / STEM.meta.json)")
        rows = bench_e2e(bench, args.data, args.backends.split(","), args.mode, args.workers)
    print(format_rows(rows))
    write_json(args.json, record({"rows": rows}, args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
