"""The papers' tables, one command away: train the recipes behind their rows, print fastlt beside the paper.

    python -m tools.paper_table cifar100_lt_if100 --data-root data     # run every row here, one after another
    python -m tools.paper_table cifar100_lt_if100 --dry-run            # the commands, the published figures
    python -m tools.paper_table imagenet_lt --emit accelerate          # one `accelerate launch` line a row
    python -m tools.paper_table imagenet_lt inat2018 --emit slurm      # an array job; `bash` it to submit
    python -m tools.paper_table cifar100_lt_if100 --report             # only the table of the finished runs

Figures and recipes: docs/paper_tables.toml; a row runs `launch.py` as `<table>__<row>` under `--runs`.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shlex
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.fileio import atomic_write_bytes, atomic_write_text
from trainer.rundir import RESULTS_FILE

ROOT = Path(__file__).resolve().parents[1]
TABLES_FILE = ROOT / "docs" / "paper_tables.toml"
GROUPS = ("many", "medium", "few", "top1")
FIGURE = "paper_table.png"
SBATCH = "paper_table.sbatch"


class PaperTableError(ValueError):
    """A table, row, data folder or run that cannot be used; the message names it."""


@dataclass(frozen=True)
class Job:
    """One `launch.py` run: a row's recipe (or a GML row's teacher) on its table's data."""

    name: str
    table: str
    recipe: str
    args: tuple[str, ...]  # what follows `launch.py`
    gpus: int
    after: tuple[str, ...] = ()  # jobs that must finish first (a GML student's teacher)


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    rows: dict[str, list[tuple[dict, str]]] = field(default_factory=dict)  # table -> [(row, job name)]


def load_tables(path: Path = TABLES_FILE) -> dict[str, dict]:
    return tomllib.loads(path.read_text())["tables"]


def row_key(method: str) -> str:
    """`DBM-BCL RX50` -> `dbm_bcl_rx50`: a row's name on the command line and in its run folder."""
    return re.sub(r"[^a-z0-9]+", "_", method.lower()).strip("_")


def data_dir(table: dict, root: Path) -> Path:
    imbalance = table.get("imbalance")
    suffix = f"_if{imbalance}" if imbalance not in (None, 100) else ""
    return root / f"{table['dataset']}{suffix}"


def make_plan(
    tables: dict[str, dict],
    names: list[str],
    data: dict[str, Path],
    runs: Path,
    overrides: list[str],
    only: set[str] | None = None,
    gpus: int | None = None,
) -> Plan:
    """The jobs of `names`' rows (those in `only`, when given), teachers first, in table order."""
    plan = Plan()
    for name in names:
        table = tables[name]
        rows = [r for r in table["rows"] if only is None or row_key(r["method"]) in only]
        plan.rows[name] = []
        base = [f"--data.dir={data[name]}", f"--run.out_dir={runs}"]
        n_gpus = gpus or table.get("gpus", 1)
        for row in rows:
            after: tuple[str, ...] = ()
            if row.get("teacher"):
                teacher = f"{name}__{row['teacher'].removeprefix(table['dataset'] + '_')}"
                if teacher not in {j.name for j in plan.jobs}:
                    plan.jobs.append(
                        Job(
                            teacher,
                            name,
                            row["teacher"],
                            _args(row["teacher"], teacher, base, [], overrides),
                            n_gpus,
                        )
                    )
                after = (teacher,)
                row_extra = [*row.get("overrides", []), f"--model.teacher={runs / teacher}"]
            else:
                row_extra = list(row.get("overrides", []))
            job = f"{name}__{row_key(row['method'])}"
            plan.jobs.append(
                Job(
                    job,
                    name,
                    row["recipe"],
                    _args(row["recipe"], job, base, row_extra, overrides),
                    n_gpus,
                    after,
                )
            )
            plan.rows[name].append((row, job))
    return plan


def _args(recipe: str, name: str, base: list[str], row: list[str], overrides: list[str]) -> tuple[str, ...]:
    return ("--config", f"configs/{recipe}.toml", *base, f"--run.name={name}", *row, *overrides)


def convert_hint(table: dict, folder: Path) -> str:
    """How to make a CIFAR table's data folder (the large-scale ones come from their split files: README)."""
    if not table["dataset"].startswith("cifar"):
        return ""
    cmd = f"python tools/convert_datasets.py {table['dataset']} --root CIFAR_PICKLES --out {folder} --split"
    return f" (convert: `{cmd} train --imb-ratio {table.get('imbalance', 100)}`, then `... --split test`)"


def python_line(job: Job) -> list[str]:
    return [sys.executable, "launch.py", *job.args]


def accelerate_line(job: Job) -> str:
    multi = " --multi_gpu" if job.gpus > 1 else ""
    return f"accelerate launch --num_processes {job.gpus}{multi} launch.py " + shlex.join(job.args)


def slurm_script(plan: Plan) -> str:
    """An array job, one task a run, in two stages (teachers, then the rest with `afterok`) that the script
    submits itself when run with bash; under sbatch each task runs its line as tools/slurm/train.sbatch's node
    command does (one node, `accelerate launch` starting one process a GPU)."""
    jobs = plan.jobs
    first = [i for i, j in enumerate(jobs) if not j.after]
    second = [i for i, j in enumerate(jobs) if j.after]
    lines = "\n".join(f"    {shlex.quote(shlex.join(j.args))}  # {i}: {j.name}" for i, j in enumerate(jobs))
    gpus = " ".join(str(j.gpus) for j in jobs)

    def submit(indices: list[int], dependency: str) -> str:
        need = max((jobs[i].gpus for i in indices), default=1)
        array = ",".join(map(str, indices))
        return f'sbatch --parsable --array={array} --gpus-per-node={need}{dependency} "$0"'

    stage2 = ""
    if second:
        after = submit(second, " --dependency=afterok:${first}")
        stage2 = f'\n    second=$({after})\n    echo "rows that need a teacher: job $second"'
    return f"""#!/usr/bin/env bash
# The papers' table rows as a SLURM array, written by `python -m tools.paper_table --emit slurm`.
#   bash {SBATCH}     submits the rows that need no teacher and the teachers, then (afterok on that whole
#   first array) the GML rows that read a teacher
# Environment overrides as tools/slurm/train.sbatch: PYTHON (default .venv/bin/python), MASTER_PORT.
#SBATCH --job-name=fastlt-paper
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --output=%x-%A_%a.out
set -euo pipefail

LINES=(
{lines}
)
GPUS=({gpus})

if [[ -z "${{SLURM_ARRAY_TASK_ID:-}}" ]]; then  # run with bash: submit the stages
    first=$({submit(first, "")})
    echo "teachers and independent rows: job $first"{stage2}
    exit 0
fi

PYTHON=${{PYTHON:-.venv/bin/python}}
n=${{GPUS[$SLURM_ARRAY_TASK_ID]}}
port=${{MASTER_PORT:-$((29500 + SLURM_ARRAY_TASK_ID))}}
cmd=("$PYTHON" -m accelerate.commands.launch --num_processes "$n" --main_process_port "$port")
if ((n > 1)); then
    cmd+=(--multi_gpu)
fi
eval "exec ${{cmd[*]@Q}} launch.py ${{LINES[$SLURM_ARRAY_TASK_ID]}}"
"""


def results_of(runs: Path, job: str) -> dict[str, Any] | None:
    path = runs / job / RESULTS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise PaperTableError(f"{path}: not valid JSON ({exc})") from None


def _pct(v: Any, scale: float = 1.0) -> str:
    return "-" if v is None else f"{scale * v:.2f}"


def _diff(ours: float | None, paper: float | None) -> str:
    return "-" if ours is None or paper is None else f"{100 * ours - paper:+.2f}"


def report(tables: dict[str, dict], plan: Plan, runs: Path, final: bool = False) -> tuple[str, dict]:
    """The side-by-side text, and {table: [(method, paper top-1, fastlt top-1)]} for the figure."""
    which = "final" if final else "best"
    out, points = [], {}
    for name, rows in plan.rows.items():
        out.append(f"\n{name}: {tables[name]['title']}  (fastlt: {which} epoch; difference fastlt - paper)")
        width = max([len("method"), *(len(r["method"]) for r, _ in rows)])
        head = f"{'method':<{width}}  " + "  ".join(
            f"{g + ' paper':>12} {'fastlt':>7} {'diff':>6}" for g in GROUPS
        )
        out += [head, "-" * len(head)]
        points[name] = []
        for row, job in rows:
            res = results_of(runs, job)
            got = (res.get(which) or res.get("final") or {}) if res else {}
            cells = [
                f"{_pct(row.get(g)):>12} {_pct(got.get(g), 100):>7} {_diff(got.get(g), row.get(g)):>6}"
                for g in GROUPS
            ]
            status = "" if res else "  (not run yet)"
            out.append(f"{row['method']:<{width}}  " + "  ".join(cells) + status)
            top1 = got.get("top1")
            points[name].append((row["method"], row.get("top1"), None if top1 is None else 100 * top1))
    return "\n".join(out), points


def figure_png(points: dict[str, list[tuple[str, float | None, float | None]]], tables: dict) -> bytes:
    """Top-1 of the paper and of fastlt, bars side by side, one panel per table."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [n for n in points if points[n]]
    fig = Figure(
        figsize=(max(6.0, 1.1 * max((len(points[n]) for n in names), default=1)), 3.2 * max(1, len(names))),
        dpi=100,
    )
    FigureCanvasAgg(fig)
    for k, name in enumerate(names):
        ax = fig.add_subplot(len(names), 1, k + 1)
        rows = points[name]
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [p or 0 for _, p, _ in rows], width=0.4, label="paper", color="#999999")
        ax.bar(
            [x + 0.2 for x in xs], [f or 0 for _, _, f in rows], width=0.4, label="fastlt", color="#1f77b4"
        )
        for x, (_, p, f) in zip(xs, rows, strict=True):
            if p is not None and f is not None:
                ax.annotate(f"{f - p:+.1f}", (x + 0.2, f), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(xs), [m for m, _, _ in rows], fontsize=8)
        ax.set_ylabel("top-1 (%)")
        ax.set_title(tables[name]["title"], fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def expected(tables: dict[str, dict], plan: Plan) -> str:
    """The published figures of the planned rows (what --dry-run shows beside the commands)."""
    out = []
    for name, rows in plan.rows.items():
        out.append(f"\n{name}: {tables[name]['title']}; the published figures (%)")
        out.append(f"  {'method':<14} {'recipe':<32} " + " ".join(f"{g:>7}" for g in GROUPS))
        for row, _ in rows:
            out.append(
                f"  {row['method']:<14} {row['recipe']:<32} "
                + " ".join(f"{_pct(row.get(g)):>7}" for g in GROUPS)
            )
    return "\n".join(out)


def run_jobs(plan: Plan, runs: Path, rerun: bool) -> list[str]:
    """Run the jobs one after another here; returns the names that failed (their dependants are skipped)."""
    failed: list[str] = []
    start = time.perf_counter()
    for i, job in enumerate(plan.jobs, 1):
        elapsed = f"{time.perf_counter() - start:.0f} s"
        head = f"[{i}/{len(plan.jobs)}, {elapsed}] {job.name}"
        if any(a in failed for a in job.after):
            print(f"{head}: skipped, its teacher failed", flush=True)
            failed.append(job.name)
            continue
        if not rerun and (runs / job.name / RESULTS_FILE).exists():
            print(f"{head}: done earlier ({runs / job.name / RESULTS_FILE})", flush=True)
            continue
        cmd = python_line(job)
        if rerun:
            cmd.append("--run.overwrite=true")
        print(f"{head}: {shlex.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            print(f"{head}: FAILED (its output is above; the other rows go on)", flush=True)
            failed.append(job.name)
    return failed


def _key_value(text: str) -> tuple[str, Path]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--data takes TABLE=DIR, got {text!r}")
    k, v = text.split("=", 1)
    return k, Path(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.paper_table",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("tables", nargs="*", help="tables of docs/paper_tables.toml (default: all)")
    p.add_argument("--rows", help="comma-separated rows (e.g. dbm_ce,dbm_bs; default: all of each table)")
    p.add_argument("--data-root", type=Path, default=Path("data"), help="folder of the converted datasets")
    p.add_argument(
        "--data", type=_key_value, action="append", default=[], help="TABLE=DIR: that table's data"
    )
    p.add_argument("--runs", type=Path, default=Path("runs/paper"), help="where the run folders go")
    p.add_argument(
        "--override", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="to every run"
    )
    p.add_argument(
        "--emit", choices=("run", "accelerate", "slurm"), default="run", help="run here, or write lines"
    )
    p.add_argument("--gpus", type=int, help="processes per row for --emit (default: the table's)")
    p.add_argument("--dry-run", action="store_true", help="list the commands and the published figures")
    p.add_argument("--report", action="store_true", help="only print the table of the runs already finished")
    p.add_argument("--rerun", action="store_true", help="run rows again whose results.json exists")
    p.add_argument("--final", action="store_true", help="compare the last epoch instead of the best")
    p.add_argument("--figure", type=Path, help=f"the PNG (default <runs>/{FIGURE})")
    p.add_argument("--script", type=Path, help=f"--emit slurm: the script (default <runs>/{SBATCH})")
    args, rest = p.parse_known_args(argv)
    bad = [t for t in rest if not re.match(r"--\w+\.\w+(=|$)", t)]
    if bad:
        p.error(f"unrecognised argument(s) {' '.join(bad)}: overrides look like --section.key=value")
    overrides = [f"--{o.removeprefix('--')}" for o in args.override] + rest

    tables = load_tables()
    names = args.tables or list(tables)
    unknown = [t for t in names if t not in tables]
    if unknown:
        p.error(f"unknown table(s) {', '.join(unknown)}; valid: {', '.join(tables)}")
    only = set(args.rows.split(",")) if args.rows else None
    if only:
        known = {row_key(r["method"]) for t in names for r in tables[t]["rows"]}
        if only - known:
            missing, valid = ", ".join(sorted(only - known)), ", ".join(sorted(known))
            p.error(f"--rows: no row {missing} in {', '.join(names)}; valid: {valid}")
    given = dict(args.data)
    stray = [t for t in given if t not in tables]
    if stray:
        p.error(f"--data: unknown table(s) {', '.join(stray)}; valid: {', '.join(tables)}")
    data = {t: given.get(t, data_dir(tables[t], args.data_root)) for t in names}
    plan = make_plan(tables, names, data, args.runs, overrides, only, args.gpus)

    if args.dry_run:
        print(f"{len(plan.jobs)} run(s), one after another (teachers first); data and run folders:")
        for t in names:
            print(f"  {t}: data {data[t]}{convert_hint(tables[t], data[t])}")
        for job in plan.jobs:
            print(
                accelerate_line(job)
                if args.emit == "accelerate"
                else shlex.join(["python", "launch.py", *job.args])
            )
        print(expected(tables, plan))
        print(
            f"\nfigure: {args.figure or args.runs / FIGURE} (top-1, paper beside fastlt, one panel a table)"
        )
        return 0
    if args.emit == "accelerate":
        print("\n".join(accelerate_line(j) for j in plan.jobs))
        return 0
    if args.emit == "slurm":
        script = args.script or args.runs / SBATCH
        script.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(script, slurm_script(plan))
        print(
            f"{script}: {len(plan.jobs)} array task(s); submit with `bash {script}`; when they are done, "
            "this command with --report prints the table"
        )
        return 0
    failed = []
    if not args.report:
        missing = [f"{t}: {data[t]}" for t in names if plan.rows[t] and not data[t].is_dir()]
        if missing:
            print(
                f"paper_table: no data folder {'; '.join(missing)} (convert it, or give --data TABLE=DIR)",
                file=sys.stderr,
            )
            return 2
        failed = run_jobs(plan, args.runs, args.rerun)
    try:
        text, points = report(tables, plan, args.runs, args.final)
    except PaperTableError as err:
        print(f"paper_table: {err}", file=sys.stderr)
        return 2
    print(text)
    figure = args.figure or args.runs / FIGURE
    atomic_write_bytes(figure, figure_png(points, tables))
    print(f"\nfigure: {figure}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
