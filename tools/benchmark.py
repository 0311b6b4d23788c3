"""fastlt's benchmark suite, one entry for every figure in docs/BENCHMARKS.md.

    python -m tools.benchmark                      # full sizes (meant for a GPU machine), all sections
    python -m tools.benchmark --tiny               # the CPU smoke run: tiny model, low resolution, few steps
    python -m tools.benchmark --only step,e2e --device cuda

Sections (`SECTIONS`: loaders, losses, augment, convert, step, e2e) each run in their own process, so one
failure hides no other and no section's threads or JIT state disturb another's timing; each writes
<out>/<section>.json. Within a section comparisons run side by side in one process; warm-up is never timed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from tools.output import record, write_json

ROOT = Path(__file__).resolve().parents[1]
# loaders (a): make_loader vs the raw libraries and a DataLoader; losses (d): each loss vs cross-entropy;
# augment: batched vs torchvision's per-image AutoAugment; convert: vs a bare ffcv DatasetWriter; step (b):
# the step alone on synthetic device batches; e2e (c): training fed by each backend, as a fraction of (b).
SECTIONS = ("loaders", "losses", "augment", "convert", "step", "e2e")


def _flags(options: dict[str, object]) -> list[str]:
    """{"res": 32, "batch": 16} -> ["--res", "32", "--batch", "16"]."""
    return [text for key, value in options.items() for text in (f"--{key}", str(value))]


def _commands(out: Path, device: str, tiny: bool) -> dict[str, list[str]]:
    """The command line of each section: one module per section, with full or tiny (smoke-test) sizes."""
    py = sys.executable
    workers = max(1, os.cpu_count() or 1)
    loaders_data = out / "loaders_data"
    stem = loaders_data / "converted" / "train"  # images written by the loaders section, reused end to end
    modules = {
        "loaders": ["tools.bench_loaders", "--data", str(loaders_data), "--device", device],
        "losses": ["tools.bench_losses", "--device", device],
        "augment": ["tools.bench_augment", "--device", device],
        "convert": ["tools.bench_convert"],
        "step": ["tools.bench_step", "step", "--device", device],
        "e2e": ["tools.bench_step", "e2e", "--data", str(stem), "--device", device],
    }
    if tiny:
        sizes = {
            "loaders": {"images": 96, "size": "64x56", "res": 32, "batch": 16, "workers": 1, "repeats": 1},
            "losses": {"sizes": "16x10", "repeats": 2, "losses": "ce,dbm_ce,fbl", "modes": "eager"},
            "augment": {"batch": 8, "res": 32, "policy": "cifar10", "iters": 2, "warmup": 1, "loop-iters": 1},
            "convert": {"images": 24, "size": "64x56", "repeats": 1, "workers": 1},
            "step": {
                "arch": "resnet_tiny",
                "resolution": 32,
                "batch": 8,
                "classes": 12,
                "modes": "eager",
                "warmup": 1,
                "steps": 2,
            },
            "e2e": {
                "arch": "resnet_tiny",
                "resolution": 32,
                "batch": 8,
                "mode": "eager",
                "workers": 1,
                "warmup": 1,
                "steps": 2,
            },
        }
    else:
        cuda = device == "cuda"
        sizes = {
            "loaders": {
                "images": 2400,
                "size": "400x350",
                "res": 224,
                "batch": 64,
                "workers": workers,
                "repeats": 3,
            },
            "losses": {},
            "augment": {"batch": 256 if cuda else 32, "res": 224},
            "convert": {"images": 400, "size": "400x350", "repeats": 3},
            "step": {"arch": "resnet50", "resolution": 224, "batch": 256, "modes": "eager,compile,graph"},
            "e2e": {"arch": "resnet50", "resolution": 224, "batch": 256, "mode": "graph", "workers": workers},
        }
        if cuda:
            modules["augment"].append("--resnet50")
    return {name: [py, "-m", *modules[name], *_flags(sizes[name])] for name in SECTIONS}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench_out"))
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes: every section in a few seconds")
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        p.error(f"--only: unknown section(s) {unknown}; valid: {', '.join(SECTIONS)}")
    if "e2e" in only and "loaders" not in only and not (args.out / "loaders_data" / "converted").is_dir():
        only.insert(0, "loaders")  # e2e reads the images the loaders section generates and converts
    args.out.mkdir(parents=True, exist_ok=True)
    commands = _commands(args.out.resolve(), args.device, args.tiny)
    summary = {"tiny": args.tiny, "sections": {}}
    failed = []
    for section in SECTIONS:
        if section not in only:
            continue
        json_path = args.out.resolve() / f"{section}.json"
        json_path.unlink(missing_ok=True)  # a figure from an earlier run must not pass for this one's
        cmd = [*commands[section], "--json", str(json_path)]
        print(f"\n== {section}: {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        seconds = round(time.perf_counter() - start, 1)
        summary["sections"][section] = {
            "command": " ".join(cmd),
            "returncode": rc,
            "seconds": seconds,
            "json": str(json_path),
        }
        if rc != 0 or not json_path.is_file():
            failed.append(section)
    write_json(args.out / "summary.json", record(summary, args.device))
    print(f"\nbenchmark: {len(summary['sections']) - len(failed)} section(s) done, results in {args.out}/")
    if failed:
        print(f"benchmark: FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
