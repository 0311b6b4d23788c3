"""Compare finished runs: many / medium / few / top-1 in a table, per-class accuracy against training count.

    python -m tools.compare_runs runs/cifar100_lt_dbm_ce runs/cifar100_lt_ce [--out compare.png] [--best]

Reads each run folder's results.json (what `launch.py` writes at the end). The table gives the final
evaluation (`--best`: the best epoch's); the figure puts every run's per-class accuracy (final evaluation) on
one axis of training images per class, log-scaled, with the many / medium / few boundaries marked, so a
method's gain on the tail is seen at a glance. Runs must share the class counts (the same training split).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

from pipelines.fileio import atomic_write_bytes
from trainer.metrics import FEW_BELOW, MANY_ABOVE
from trainer.rundir import RESULTS_FILE

GROUPS = ("many", "medium", "few", "top1")


class CompareError(ValueError):
    """A run folder that cannot be compared; the message names it."""


def read_run(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULTS_FILE
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise CompareError(
            f"{path}: no results (the run has not finished, or {run_dir} is no run folder)"
        ) from None
    except json.JSONDecodeError as exc:
        raise CompareError(f"{path}: not valid JSON ({exc})") from None
    for key in ("final", "class_counts"):
        if key not in results:
            raise CompareError(f"{path}: no {key!r} entry")
    return results


def table(names: list[str], runs: list[dict[str, Any]], best: bool = False) -> str:
    which = "best" if best else "final"
    width = max(len("run"), *(len(n) for n in names))
    lines = [f"{'run':<{width}}  {'epoch':>5}  " + "  ".join(f"{g:>7}" for g in GROUPS)]
    for name, run in zip(names, runs, strict=True):
        row = run.get(which) or {}
        cells = ("-" if row.get(g) is None else f"{100 * row[g]:.2f}" for g in GROUPS)
        lines.append(f"{name:<{width}}  {row.get('epoch', '-')!s:>5}  " + "  ".join(f"{c:>7}" for c in cells))
    return "\n".join(lines)


def figure_png(names: list[str], runs: list[dict[str, Any]]) -> bytes:
    """Per-class accuracy (final evaluation) against training images per class, one series per run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    counts = runs[0]["class_counts"]
    order = sorted(range(len(counts)), key=lambda c: counts[c])
    for name, run in zip(names, runs, strict=True):
        acc = run["final"].get("per_class") or []
        points = [(counts[c], 100 * acc[c]) for c in order if c < len(acc) and acc[c] is not None]
        ax.plot(*zip(*points, strict=True), marker="o", ms=3, lw=1.2, label=name)
    ax.set_xscale("log")
    for edge in (FEW_BELOW, MANY_ABOVE):
        ax.axvline(edge, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"training images per class (few < {FEW_BELOW} <= medium <= {MANY_ABOVE} < many)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (runs/<name>)")
    p.add_argument("--out", type=Path, default=Path("compare_runs.png"), help="the figure (PNG)")
    p.add_argument("--best", action="store_true", help="tabulate each run's best epoch instead of its last")
    args = p.parse_args(argv)
    try:
        runs = [read_run(r) for r in args.runs]
        counts = runs[0]["class_counts"]
        for run_dir, run in zip(args.runs[1:], runs[1:], strict=True):
            if run["class_counts"] != counts:
                raise CompareError(
                    f"{run_dir}: trained on other class counts than {args.runs[0]}: not the same split"
                )
    except CompareError as err:
        print(f"compare_runs: {err}", file=sys.stderr)
        return 2
    names = [r.name for r in args.runs]
    print(table(names, runs, args.best))
    try:
        atomic_write_bytes(args.out, figure_png(names, runs))
    except OSError as err:  # a missing folder, no permission, a full disk
        print(
            f"compare_runs: --out {args.out}: cannot write the figure: {err.strerror or err}", file=sys.stderr
        )
        return 2
    print(f"per-class accuracy against training count: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
