"""Forward + backward time of every registered loss against plain cross-entropy, eager and compiled.

    python tools/bench_losses.py                       # CPU, (N, C) = (256, 1000) and (512, 8142)
    python tools/bench_losses.py --device cuda --out bench_out/losses.json

Everything runs in one process on the same random inputs: cosines in [-0.9, 0.9] as logits, [N, 512]
features, and for BCL [2N, 128] / [C, 128] embeddings and centres. A timed call is the loss's forward plus
`torch.autograd.grad` to its inputs. "compiled" is `torch.compile(loss, fullgraph=True)` (Inductor, the
default mode); the compile and `--warmup` calls are left out. CPU times use `perf_counter`, CUDA times CUDA
events with one synchronisation per measurement. Each figure is the best of `--rounds` means of `--repeats`
calls, the loss and plain `F.cross_entropy` interleaved round by round (same mode, size, inputs and, on a
busy host, the same load); `ratio` divides the first by the second.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from losses import ModelOutput, build_loss, loss_class, loss_names  # noqa: E402

SIZES = ((256, 1000), (512, 8142))
FEATURE_DIM, EMBED_DIM = 512, 128


def long_tail_counts(num_classes: int, n_max: int = 1280, imbalance: float = 256.0) -> list[int]:
    return [max(1, int(n_max * imbalance ** (-c / max(num_classes - 1, 1)))) for c in range(num_classes)]


def _inputs(n: int, c: int, device: torch.device) -> tuple[ModelOutput, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(0)
    output = ModelOutput(
        features=torch.randn(n, FEATURE_DIM, device=device, generator=g).relu(),
        logits=torch.rand(n, c, device=device, generator=g) * 1.8 - 0.9,
        embeddings=F.normalize(torch.randn(2 * n, EMBED_DIM, device=device, generator=g), dim=1),
        centers=F.normalize(torch.randn(c, EMBED_DIM, device=device, generator=g), dim=1),
    )
    target = torch.randint(0, c, (n,), device=device, generator=g)
    return ModelOutput(*(t.requires_grad_() for t in output)), target


def _timer(device: torch.device, clock: str) -> Callable[[Callable[[], object], int], float]:
    """Mean milliseconds per call of fn over `repeats` calls."""

    def host(fn: Callable[[], object], repeats: int) -> float:
        now = time.thread_time if clock == "thread" else time.perf_counter
        start = now()
        for _ in range(repeats):
            fn()
        return (now() - start) * 1000.0 / repeats

    def cuda(fn: Callable[[], object], repeats: int) -> float:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(repeats):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return begin.elapsed_time(end) / repeats

    return cuda if device.type == "cuda" else host


def _step(loss_fn: Callable, output: ModelOutput, target: torch.Tensor) -> Callable[[], object]:
    def step() -> None:
        value = loss_fn(output, target)
        torch.autograd.grad(value, output, allow_unused=True)

    return step


def _side_by_side(
    steps: dict[str, Callable[[], object]], device, repeats, rounds, warmup, clock
) -> dict[str, float]:
    """Best-of-rounds ms of each step, the steps interleaved round by round so that they share the
    machine's conditions (on a busy host, a burst of load hits both sides of a ratio)."""
    for step in steps.values():
        for _ in range(warmup):  # the first call compiles
            step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    time_ms = _timer(device, clock)
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(rounds):
        for name, step in steps.items():
            best[name] = min(best[name], time_ms(step, repeats))
    return best


def plain_ce(output: ModelOutput, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output.logits, target)


def run(
    device: str = "cpu",
    sizes: Sequence[tuple[int, int]] = SIZES,
    repeats: int = 20,
    *,
    losses: Sequence[str] | None = None,
    modes: Sequence[str] = ("eager", "compiled"),
    rounds: int = 3,
    warmup: int = 3,
    clock: str = "wall",
) -> list[dict]:
    """One row per (size, loss, mode): ms per forward+backward, plain CE's ms, and their ratio.

    clock="thread" (CPU only) times with the calling thread's CPU time instead of the wall clock: on a shared
    host it leaves out time the process spent waiting for a core. It needs one intra-op thread
    (`torch.set_num_threads(1)`), since other threads' work would go uncounted.
    """
    dev = torch.device(device)
    if clock not in ("wall", "thread"):
        raise ValueError(f"clock must be wall or thread, got {clock!r}")
    if clock == "thread" and (dev.type == "cuda" or torch.get_num_threads() != 1):
        raise ValueError("clock='thread' times CPU runs with torch.set_num_threads(1) only")
    # By default the losses a classifier's ModelOutput feeds (NCL's take a multi-expert model's output).
    names = list(losses) if losses else [n for n in loss_names() if loss_class(n).model == "classifier"]
    rows = []
    for n, c in sizes:
        output, target = _inputs(n, c, dev)
        counts = long_tail_counts(c)
        for mode, name in itertools.product(modes, names):
            loss = build_loss(name, counts).to(dev)
            loss.set_epoch(180, 200)  # DRW on, FBL's curriculum > 0: each loss's expensive branch
            fns: dict[str, Callable] = {"ce": plain_ce, "loss": loss}
            if mode == "compiled":
                torch._dynamo.reset()  # a fresh cache per pair: no loss pays for guards of another
                fns = {k: torch.compile(fn, fullgraph=True, dynamic=False) for k, fn in fns.items()}
            steps = {k: _step(fn, output, target) for k, fn in fns.items()}
            ms = _side_by_side(steps, dev, repeats, rounds, warmup, clock)
            rows.append(dict(n=n, c=c, loss=name, mode=mode, ms=ms["loss"], ce_ms=ms["ce"]))
    machine = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    for row in rows:
        row.update(device=machine, threads=torch.get_num_threads(), clock=clock, torch=torch.__version__)
        row["ratio"] = round(row["ms"] / row["ce_ms"], 3)
        row["ms"], row["ce_ms"] = round(row["ms"], 4), round(row["ce_ms"], 4)
    return rows


def markdown(rows: list[dict]) -> str:
    """Eager and compiled side by side: one line per (size, loss)."""
    by_key: dict[tuple[int, int, str], dict[str, dict]] = {}
    for row in rows:
        by_key.setdefault((row["n"], row["c"], row["loss"]), {})[row["mode"]] = row
    lines = [
        "| N x C | loss | eager ms | eager CE ms | ratio | compiled ms | compiled CE ms | ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (n, c, name), modes in by_key.items():
        cells = []
        for mode in ("eager", "compiled"):
            row = modes.get(mode)
            cells += [f"{row['ms']:.3f}", f"{row['ce_ms']:.3f}", f"{row['ratio']:.2f}x"] if row else ["-"] * 3
        lines.append(f"| {n} x {c} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default=",".join(f"{n}x{c}" for n, c in SIZES), help="NxC[,NxC...]")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--losses", default="", help=f"comma-separated subset of: {', '.join(loss_names())}")
    p.add_argument("--modes", default="eager,compiled")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave torch's default)")
    p.add_argument(
        "--clock",
        default="wall",
        choices=("wall", "thread"),
        help="CPU only: 'thread' = this thread's CPU time, for shared hosts (needs --threads 1)",
    )
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    a = p.parse_args(argv)
    sizes = [tuple(int(v) for v in size.split("x")) for size in a.sizes.split(",")]
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = run(
        a.device,
        sizes,
        a.repeats,
        losses=[s for s in a.losses.split(",") if s] or None,
        modes=a.modes.split(","),
        rounds=a.rounds,
        warmup=a.warmup,
        clock=a.clock,
    )
    command = "python tools/bench_losses.py " + " ".join(sys.argv[1:] if argv is None else argv)
    first = rows[0]
    print(command)
    print(f"{first['device']}, {first['threads']} threads, {first['clock']} clock, torch {first['torch']}\n")
    print(markdown(rows))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
