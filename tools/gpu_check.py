"""`make gpu-check`: what a GPU box with only torch, torchvision and accelerate can tell about fastlt's CUDA
path, in at most 7 minutes, as JSON lines plus a table (no DALI, FFCV, network or API newer than torch 2.11).

    PYTHONPATH=. python3 tools/gpu_check.py --out bench_out/gpu_check.jsonl   # on the GPU
    PYTHONPATH=. python3 tools/gpu_check.py --dry-run                  # tiny sizes on the CPU (a test)
    PYTHONPATH=. python3 tools/gpu_check.py --only resnet50,augment    # some stages

Stages run in priority order, each in its own process under its own time cap, never past `--budget`
seconds in all; records (tools/gpu_check_core.py) go to `--out` and stdout, logs to `<out>.log`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tools.gpu_check_core import Context, record, skipped  # noqa: E402

StageFn = Callable[[Context], Iterator[dict[str, Any]]]


@dataclass(frozen=True)
class Stage:
    name: str
    cap_s: float  # hard time cap of the stage's process
    min_s: float  # skip the stage when less than this is left of the budget
    needs_cuda: bool
    target: str  # "module:function"

    def function(self) -> StageFn:
        module, name = self.target.split(":")
        return getattr(__import__(module, fromlist=[name]), name)


# Priority order: the environment, capture and DDP correctness, the step speeds, then the decode proxy.
STAGES: tuple[Stage, ...] = (
    Stage("env", 30, 5, False, "tools.gpu_check_env:stage_env"),
    Stage("gpu_tests", 150, 30, True, "tools.gpu_check_env:stage_gpu_tests"),
    Stage("capture", 60, 25, True, "tools.gpu_check_capture:stage_capture"),
    Stage("ddp", 50, 20, False, "tools.gpu_check_capture:stage_ddp"),
    Stage("resnet50", 210, 90, False, "tools.gpu_check_speed:stage_resnet50"),
    Stage("augment", 75, 25, False, "tools.gpu_check_speed:stage_augment"),
    Stage("cifar", 60, 30, True, "tools.gpu_check_speed:stage_cifar"),
    Stage("decode", 25, 10, True, "tools.gpu_check_speed:stage_decode"),
)
BY_NAME = {s.name: s for s in STAGES}
MARGIN_S = 5.0  # a stage's own deadline comes this much before its process is killed


def _device(dry_run: bool) -> torch.device:
    return torch.device("cuda", 0) if torch.cuda.is_available() and not dry_run else torch.device("cpu")


def run_stage(stage: Stage, ctx: Context) -> Iterator[dict[str, Any]]:
    """Run one stage in this process; an exception becomes an `error` record after what it yielded."""
    torch._dynamo.reset()
    try:
        yield from stage.function()(ctx)
    except Exception as exc:
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:400]
        yield record(stage.name, "stage", status="error", note=msg)


def _child(args: argparse.Namespace) -> int:
    """`--stage NAME`: run one stage and append its records to `--stage-out` as they come."""
    stage = BY_NAME[args.stage]
    ctx = Context(_device(args.dry_run), args.dry_run, time.monotonic() + args.stage_seconds, args.results)
    with open(args.stage_out, "a") as fh:
        for rec in run_stage(stage, ctx):
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
    return 0


def _isolated(stage: Stage, seconds: float, args: argparse.Namespace, log: Path) -> list[dict[str, Any]]:
    """Run a stage in a child process with a hard timeout; its records (even partial ones) come back."""
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl", delete=False) as tmp:
        stage_out = Path(tmp.name)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--stage",
        stage.name,
        "--stage-out",
        str(stage_out),
    ]
    cmd += ["--stage-seconds", f"{max(1.0, seconds - MARGIN_S):.1f}", "--results", str(args.out)]
    cmd += ["--dry-run"] if args.dry_run else []
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    with open(log, "a") as err:
        err.write(f"\n===== stage {stage.name} (cap {seconds:.0f} s) =====\n")
        err.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=err, stderr=err, start_new_session=True)
        try:
            rc = proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the stage and any compile workers it started
            proc.wait()
            rc = None
    recs = [json.loads(line) for line in stage_out.read_text().splitlines() if line.strip()]
    stage_out.unlink()
    if rc is None:
        recs.append(
            record(stage.name, "stage", status="timeout", note=f"killed at its cap of {seconds:.0f} s")
        )
    elif rc != 0:
        tail = " | ".join(log.read_text().strip().splitlines()[-3:])[-400:]
        recs.append(record(stage.name, "stage", status="error", note=f"exit code {rc}: {tail}"))
    return recs


def run_all(args: argparse.Namespace, stages: Iterable[Stage]) -> list[dict[str, Any]]:
    device = _device(args.dry_run)
    isolate = args.isolate == "yes" or (args.isolate == "auto" and device.type == "cuda")
    start = time.monotonic()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("")
    log = args.out.with_name(args.out.name + ".log")
    log.write_text("")
    results: list[dict[str, Any]] = []
    for stage in stages:
        left = args.budget - (time.monotonic() - start)
        if stage.needs_cuda and device.type != "cuda":
            recs = [skipped(stage.name, "stage", "skipped: no CUDA")]
        elif left < stage.min_s:
            recs = [
                skipped(
                    stage.name,
                    "stage",
                    f"skipped: would start too late ({left:.0f} s left < {stage.min_s:.0f} s)",
                )
            ]
        else:
            seconds = min(stage.cap_s, left)
            print(
                f"[gpu-check] {stage.name}: up to {seconds:.0f} s ({left:.0f} s of the budget left)",
                file=sys.stderr,
                flush=True,
            )
            t0 = time.monotonic()
            if isolate:
                recs = _isolated(stage, seconds, args, log)
            else:
                ctx = Context(device, args.dry_run, time.monotonic() + seconds - MARGIN_S, args.out)
                recs = list(run_stage(stage, ctx))
            for rec in recs:
                rec.setdefault("detail", {})["stage_s"] = round(time.monotonic() - t0, 1)
        for rec in recs:
            rec["dry_run"] = args.dry_run
            line = json.dumps(rec)
            print(line, flush=True)
            with open(args.out, "a") as fh:
                fh.write(line + "\n")
        results += recs
    print(f"[gpu-check] done in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return results


def table(results: list[dict[str, Any]]) -> str:
    rows = [("stage", "case", "status", "value", "ratio", "note")]
    for r in results:
        value = "" if r["value"] is None else f"{r['value']:.4g} {r['unit']}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x {r['baseline']}"
        rows.append((r["stage"], r["case"], r["status"], value, ratio, (r["note"] or "")[:70]))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[5] for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out", type=Path, default=Path("bench_out/gpu_check.jsonl"), help="JSON lines written here"
    )
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, CUDA stages skipped")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole run (400; dry run 120)")
    p.add_argument("--only", default="", help="comma-separated stage names (default: all, in order)")
    p.add_argument(
        "--isolate", choices=("auto", "yes", "no"), default="auto", help="a process per stage (auto: on CUDA)"
    )
    p.add_argument("--stage", choices=sorted(BY_NAME), help=argparse.SUPPRESS)
    p.add_argument("--stage-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--stage-seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    p.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage:
        return _child(args)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(BY_NAME))
    if unknown:
        p.error(f"unknown stage(s) {unknown}; choose from {[s.name for s in STAGES]}")
    if args.budget is None:
        args.budget = 120.0 if args.dry_run else 400.0
    stages = [s for s in STAGES if not names or s.name in names]
    results = run_all(args, stages)
    print("\n" + table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
