"""Forward + backward time of every registered loss against plain cross-entropy, eager and compiled.

    python -m tools.bench_losses                       # CPU, (N, C) = (256, 1000) and (512, 8142)
    python -m tools.bench_losses --device cuda --json bench_out/losses.json

Inputs are those each loss's model returns (`INPUTS`, per model kind). A timed call is the forward plus
`torch.autograd.grad`, eager or `torch.compile(fullgraph=True)`, after warm-up; a figure is the best of
`--rounds` means of `--repeats` calls, interleaved with `F.cross_entropy`; `ratio` divides the two.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from losses import ModelOutput, build_loss, loss_class, loss_names
from losses.output import ExpertOutput, MoCoOutput
from tools.longtail import imagenet_lt_counts
from tools.output import add_json_flag, record, write_json
from tools.timer import CLOCKS, Timer

SIZES = ((256, 1000), (512, 8142))
FEATURE_DIM, EMBED_DIM = 512, 128


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


def _gml_inputs(n: int, c: int, device: torch.device) -> tuple[MoCoOutput, torch.Tensor]:
    """What GML's student hands its loss: a queue of min(16 C, 16384) keys (ImageNet-LT's is 16384)."""
    plain, target = _inputs(n, c, device)
    k = min(16 * c, 16384)
    g = torch.Generator(device=device).manual_seed(1)
    sizes = torch.full((c,), k // c, dtype=torch.long, device=device)
    sizes[0] += k - int(sizes.sum())
    output = MoCoOutput(
        features=plain.features,
        logits=plain.logits,
        queue_similarities=(torch.rand(n, k, device=device, generator=g) * 2 - 1).requires_grad_(),
        queue_sizes=sizes,
        own_keys=torch.arange(n, device=device)[:, None] == torch.arange(k, device=device)[None, :],
        temperature=torch.tensor(0.1, device=device, requires_grad=True),
        teacher_logits=torch.rand(n, c, device=device, generator=g) * 1.8 - 0.9,
    )
    return output, target


def _ncl_inputs(n: int, c: int, device: torch.device) -> tuple[ExpertOutput, torch.Tensor]:
    """What NCL's experts hand their loss in training: the model config's default experts and queue."""
    from trainer.config import ModelConfig

    experts, queue = ModelConfig().ncl_experts, ModelConfig().ncl_queue
    plain, target = _inputs(n, c, device)
    g = torch.Generator(device=device).manual_seed(2)
    output = ExpertOutput(
        features=torch.randn(n, experts * FEATURE_DIM, device=device, generator=g).relu().requires_grad_(),
        logits=plain.logits,
        expert_logits=(torch.rand(experts, n, c, device=device, generator=g) * 1.8 - 0.9).requires_grad_(),
        contrast_logits=(
            torch.rand(experts, n, 1 + queue, device=device, generator=g) * 2 - 1
        ).requires_grad_(),
    )
    return output, target


# The inputs of each kind of model (a loss's `model` attribute): every registered loss's kind has one.
INPUTS = {"classifier": _inputs, "gml_student": _gml_inputs, "ncl_experts": _ncl_inputs}


def _step(loss_fn: Callable, output: ModelOutput | MoCoOutput, target: torch.Tensor) -> Callable[[], object]:
    differentiable = [t for t in output if t is not None and t.requires_grad]

    def step() -> None:
        value = loss_fn(output, target)
        torch.autograd.grad(value, differentiable, allow_unused=True)

    return step


def _side_by_side(steps: dict[str, Callable[[], object]], timer: Timer, repeats, rounds, warmup) -> dict:
    """Best-of-rounds ms of each step, the steps interleaved round by round so that they share the
    machine's conditions (on a busy host, a burst of load hits both sides of a ratio)."""
    for step in steps.values():
        timer.warm_up(step, warmup)  # the first call compiles
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(rounds):
        for name, step in steps.items():
            best[name] = min(best[name], 1e3 * timer.per_call(step, repeats))
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

    clock="thread" (CPU only, one torch thread) times with the calling thread's CPU time (tools/timer.py)."""
    dev = torch.device(device)
    timer = Timer(dev, clock)
    names = list(losses) if losses else loss_names()
    for name in names:
        if loss_class(name).model not in INPUTS:
            raise ValueError(
                f"loss {name!r}: the bench has no inputs for its model kind {loss_class(name).model!r}"
            )
    rows = []
    for n, c in sizes:
        kinds = {loss_class(name).model for name in names}
        inputs = {kind: make(n, c, dev) for kind, make in INPUTS.items() if kind in kinds}
        counts = imagenet_lt_counts(c)
        for mode, name in itertools.product(modes, names):
            output, target = inputs[loss_class(name).model]
            loss = build_loss(name, counts).to(dev)
            loss.set_epoch(180, 200)  # DRW on, FBL's curriculum > 0: each loss's expensive branch
            fns: dict[str, Callable] = {"ce": plain_ce, "loss": loss}
            if mode == "compiled":
                torch._dynamo.reset()  # a fresh cache per pair: no loss pays for guards of another
                fns = {k: torch.compile(fn, fullgraph=True, dynamic=False) for k, fn in fns.items()}
            steps = {k: _step(fn, output, target) for k, fn in fns.items()}
            ms = _side_by_side(steps, timer, repeats, rounds, warmup)
            figures = dict(
                ms=round(ms["loss"], 4), ce_ms=round(ms["ce"], 4), ratio=round(ms["loss"] / ms["ce"], 3)
            )
            rows.append(dict(n=n, c=c, loss=name, mode=mode, **figures))
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
        choices=CLOCKS,
        help="CPU only: 'thread' = this thread's CPU time, for shared hosts (needs --threads 1)",
    )
    add_json_flag(p)
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
    result = record({"threads": torch.get_num_threads(), "clock": a.clock, "rows": rows}, a.device)
    env = result["environment"]
    print("python -m tools.bench_losses " + " ".join(sys.argv[1:] if argv is None else argv))
    torch_version = env["versions"]["torch"]
    print(f"{env['device_name']}, {result['threads']} threads, {a.clock} clock, torch {torch_version}\n")
    print(markdown(rows))
    write_json(a.json, result)


if __name__ == "__main__":
    main()
