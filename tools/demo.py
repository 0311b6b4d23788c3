"""`make demo`: generate the embedded long-tailed set, convert it, train plain CE, DBM-CE and DBM-BS, compare.

    python -m tools.demo --out data/demo                       # what `make demo` runs
    python -m tools.demo --out /tmp/demo --run.epochs=1        # any --section.key=value goes to every run

Each stage is skipped when its output already exists, so a second run only trains. Conversion calls
`pipelines.convert` in process (what tools/convert_datasets.py runs); training goes through `launch.py`
exactly as a user would run it, and this script only reads the run folders' results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from pipelines.backends import SUFFIXES
from pipelines.config import data_path
from pipelines.convert import ConvertOptions, SplitRequest, convert, summary_line
from pipelines.fileio import atomic_write_bytes
from pipelines.meta import META_SUFFIX, read_meta
from tools.compare_runs import figure_png
from tools.make_demo_data import make_demo_data

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("many", "medium", "few", "top1")


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def prepare(out: Path, backend: str) -> Path:
    images, converted = out / "images", out / "converted"
    if not (images / "test.txt").exists():
        totals = make_demo_data(images)
        print(f"demo: generated {totals['train']} train / {totals['test']} test images in {images}")
    for split in ("train", "test"):
        if data_path(converted, split, backend).exists() and (converted / f"{split}{META_SUFFIX}").exists():
            continue
        request = SplitRequest("imagenet_lt", images, split_file=images / f"{split}.txt")
        # Both formats from one decode, so another --backend finds its files; a partial split is replaced.
        print(summary_line(convert(request, converted, ConvertOptions(overwrite=True))), flush=True)
    return converted


def train(config: str, converted: Path, runs: Path, loss: str, backend: str, extra: list[str]) -> dict:
    name = f"demo_{loss}_{backend}"
    _run(
        [
            sys.executable,
            "launch.py",
            "--config",
            config,
            f"--loss.name={loss}",
            f"--data.backend={backend}",
            f"--data.dir={converted}",
            f"--run.out_dir={runs}",
            f"--run.name={name}",
            "--run.overwrite=true",  # `make demo` is re-runnable: each run replaces its previous demo run
            *extra,
        ]
    )
    return json.loads((runs / name / "results.json").read_text())


def _fmt(value) -> str:
    return "   -  " if value is None else f"{100 * value:6.2f}"


def table(results: dict[str, dict]) -> str:
    head = f"{'loss':<10} {'many':>6} {'medium':>6} {'few':>6} {'overall':>7}   (final epoch, top-1 %)"
    lines = [head, "-" * len(head)]
    for loss, res in results.items():
        final = res.get("final", res)
        lines.append(f"{loss:<10} " + " ".join(_fmt(final.get(g)) for g in GROUPS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("data/demo"))
    p.add_argument("--config", default="configs/demo.toml")
    p.add_argument("--losses", default="ce,dbm_ce,dbm_bs", help="comma-separated loss names to compare")
    # DALI: no per-process JIT compile (FFCV's first pass costs ~20 s in each of the demo's runs)
    p.add_argument("--backend", default="dali", choices=tuple(SUFFIXES))
    p.add_argument("--runs", type=Path, default=Path("runs"))
    args, overrides = p.parse_known_args(argv)  # anything else: --section.key=value for every run
    start = time.perf_counter()
    converted = prepare(args.out, args.backend)
    results = {
        loss: train(args.config, converted, args.runs, loss, args.backend, overrides)
        for loss in args.losses.split(",")
    }
    print()
    print(table(results))
    figure = args.runs / "demo_per_class.png"  # every loss's per-class accuracy against training count
    atomic_write_bytes(figure, figure_png(list(results), list(results.values())))
    chance = 1 / read_meta(converted / "train").num_classes
    print(
        f"\nchance level {100 * chance:.1f}%; demo finished in {time.perf_counter() - start:.0f} s; "
        f"run folders under {args.runs}/, per-class accuracy of every loss in {figure}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
