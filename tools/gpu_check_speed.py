"""Throughput stages: `resnet50` (eager / compile / graph, the host lead, eager augmentation in front of the
step), `augment` (the batched augmentations at 224 px, batch 256, eager and compiled, as a fraction of the
`resnet50` stage's step: goal AutoAugment + Cutout < 5%), `cifar` (ResNet-32 at batch 64 and 128, graph
against compile) and `decode` (torchvision's batched nvJPEG decode). Times are tools/timer.py's (CUDA events
after warm-up); every ratio is against a baseline run side by side in the same process. The dry run uses a
tiny model at a tiny size, on the CPU. Eager augmentations draw from an explicit device generator, as the
loader calls them; compiled ones from the global RNG (Dynamo does not trace a Generator argument).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from tools.gpu_check_core import (
    Context,
    HostLead,
    NoLead,
    RecompileCounter,
    images_batch,
    record,
    run_with_lead,
    skipped,
    sync,
    with_ratio,
)
from tools.gpu_check_trainer import Trainer, build_step
from tools.timer import Timer

NO_CUDA = "skipped: no CUDA"


def timed_mode(
    ctx: Context,
    stage: str,
    case: str,
    arch: str,
    res: int,
    batch: int,
    mode: str,
    *,
    classes: int = 1000,
    iters: int = 20,
    compile_backend: str = "inductor",
) -> tuple[dict[str, Any], Trainer]:
    """Build the trainer's step for `mode`, run it until it is compiled/captured (timed), then time `iters`
    steps on one device-resident batch. Returns the record and the step (reused by later cases)."""
    dev = ctx.device
    # Fresh Dynamo caches: a second model in this process would otherwise count as recompiles of the
    # first one's frames (Inductor's on-disk caches stay warm, so a later mode compiles faster: noted).
    torch._dynamo.reset()
    t = build_step(arch, classes, mode, dev, precision="bf16", compile_backend=compile_backend)
    x, y = images_batch(batch, res, dev, num_classes=classes)
    setup_calls = 5 if mode == "graph" else 2  # graph: 3 warm-ups, the capturing call, one replay
    with RecompileCounter() as recompiles:
        sync(dev)
        start = time.perf_counter()
        for _ in range(setup_calls):
            t(x, y)
        t.read_loss()  # a host sync: warm-up work is done before the clock starts
        setup = time.perf_counter() - start
        seconds = Timer(dev).per_call(lambda: t(x, y), iters)
        loss = t.read_loss()
    rec = record(
        stage,
        case,
        batch / seconds,
        "img/s",
        ms_per_step=1e3 * seconds,
        setup_s=max(0.0, setup - setup_calls * seconds),  # compile (+ capture) time of the first calls
        recompiles=recompiles.count,
        effective_mode=t.mode,
        graphs=t.captured(),
        loss=loss,
        arch=arch,
        res=res,
        batch=batch,
    )
    return rec, t


def stage_resnet50(ctx: Context) -> Iterator[dict[str, Any]]:
    arch, res, batch, classes = ("resnet_tiny", 16, 8, 10) if ctx.dry_run else ("resnet50", 224, 256, 1000)
    iters = 2 if ctx.dry_run else 20
    backend = "eager" if ctx.dry_run else "inductor"
    recs: dict[str, dict[str, Any]] = {}
    steps: dict[str, Trainer] = {}
    for mode in ("eager", "compile", "graph"):
        if mode == "graph" and not ctx.cuda:
            yield skipped("resnet50", mode, NO_CUDA)
            continue
        if ctx.left() < (10 if ctx.dry_run else 60) and mode != "eager":
            yield skipped("resnet50", mode, f"stage time cap reached ({ctx.left():.0f} s left)")
            continue
        kw: dict[str, Any] = dict(classes=classes, iters=iters, compile_backend=backend)
        rec, step = timed_mode(ctx, "resnet50", mode, arch, res, batch, mode, **kw)
        if mode != "eager":  # kept for the host-lead and augmentation cases; eager's memory goes back now
            steps[mode] = step
        del step
        if mode == "graph" and "compile" in recs:
            rec["detail"]["ratio_vs_compile"] = rec["value"] / recs["compile"]["value"]
        recs[mode] = rec
        yield with_ratio(rec, recs.get("eager"))
    fast = steps.get("graph") or steps.get("compile")
    yield from _host_lead(ctx, steps.get("graph"), res, batch, classes)
    yield from _augment_in_front(ctx, fast, res, batch, classes)


def _host_lead(
    ctx: Context, graph: Trainer | None, res: int, batch: int, classes: int
) -> Iterator[dict[str, Any]]:
    """How many steps the host runs ahead of the GPU in graph mode on a batch already on the device (a
    loader faster than the GPU), without and with the proposed ring of 2 events."""
    if graph is None:
        yield skipped("resnet50", "host_lead_free", NO_CUDA if not ctx.cuda else "no graph step")
        yield skipped("resnet50", "host_lead_ring2", NO_CUDA if not ctx.cuda else "no graph step")
        return
    x, y = images_batch(batch, res, ctx.device, num_classes=classes)
    batches = [(x, y)] * 40
    for case, lead in (("host_lead_free", NoLead()), ("host_lead_ring2", HostLead(2))):
        sync(ctx.device)
        out = run_with_lead(lambda b: graph(*b), batches, lead)
        graph.read_loss()
        yield record("resnet50", case, out["max_lead"], "steps in flight", **out)


def _augment_in_front(
    ctx: Context, step: Trainer | None, res: int, batch: int, classes: int
) -> Iterator[dict[str, Any]]:
    """The training loop's real order: eager RandAugment (timm n2 m10 mstd0.5) + Cutout on the batch, then
    the step; against the step alone."""
    from pipelines.augment import build_batch_augment

    if step is None:
        yield skipped("resnet50", "randaugment_cutout_then_step", "no compiled step")
        return
    dev = ctx.device
    aug = build_batch_augment(
        auto_augment="randaugment", cutout=16, randaugment_m=10, magnitude_std=0.5, randaugment_style="timm"
    ).to(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    x, y = images_batch(batch, res, dev, num_classes=classes)
    iters = 2 if ctx.dry_run else 20
    for _ in range(2):
        step(aug(x, generator=g), y)
    timer = Timer(dev)
    alone = timer.per_call(lambda: step(x, y), iters)
    both = timer.per_call(lambda: step(aug(x, generator=g), y), iters)
    step.read_loss()
    base = record("resnet50", f"{step.mode}_step_alone", batch / alone, "img/s", ms_per_step=1e3 * alone)
    yield base
    rec = record(
        "resnet50",
        "randaugment_cutout_then_step",
        batch / both,
        "img/s",
        ms_per_step=1e3 * both,
        augment_fraction_of_step=(both - alone) / alone,
        step_mode=step.mode,
    )
    yield with_ratio(rec, base)


def stage_cifar(ctx: Context) -> Iterator[dict[str, Any]]:
    """CIFAR ResNet-32 at 32 px, batch 64 and 128 (the CIFAR-LT recipes): launch overhead rules here, so
    graph mode should beat compile (goal: >= 1.15x at batch 64)."""
    if not ctx.cuda:
        yield skipped("cifar", "graph_vs_compile", NO_CUDA)
        return
    for batch in (64, 128):
        recs: dict[str, dict[str, Any]] = {}
        for mode in ("compile", "graph"):
            case = f"b{batch}_{mode}"
            if ctx.left() < 20:
                yield skipped("cifar", case, f"stage time cap reached ({ctx.left():.0f} s left)")
                continue
            recs[mode], _ = timed_mode(ctx, "cifar", case, "resnet32", 32, batch, mode, classes=100, iters=50)
            yield with_ratio(recs[mode], recs.get("compile"))


def _jpegs(n: int, seed: int = 0) -> list[torch.Tensor]:
    """n 500x375 JPEGs at quality 90 with photo-like content (smooth shapes plus fine noise)."""
    from torchvision.io import encode_jpeg

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        coarse = torch.rand(1, 3, 12, 16, generator=g) * 255
        img = torch.nn.functional.interpolate(coarse, size=(375, 500), mode="bicubic", align_corners=False)
        img = img + torch.randn(1, 3, 375, 500, generator=g) * 12
        out.append(encode_jpeg(img[0].clamp(0, 255).to(torch.uint8), quality=90))
    return out


def stage_decode(ctx: Context) -> Iterator[dict[str, Any]]:
    """torchvision's batched GPU JPEG decode (nvJPEG) against its CPU decode, as a proxy for the decode
    ceiling DALI's `mixed` decoder would see (DALI itself is not on the box)."""
    if not ctx.cuda:
        yield skipped("decode", "nvjpeg_batch", NO_CUDA)
        return
    from torchvision.io import decode_jpeg

    data = _jpegs(128)
    wall = time.perf_counter
    decode_jpeg(data[:8])
    start = wall()
    decode_jpeg(data)
    cpu = record("decode", "cpu_one_thread", len(data) / (wall() - start), "img/s", threads=1)
    yield cpu
    decode_jpeg(data[:8], device=ctx.device)
    seconds = Timer(ctx.device).per_call(lambda: decode_jpeg(data, device=ctx.device), 5)
    yield with_ratio(record("decode", "nvjpeg_batch", len(data) / seconds, "img/s", batch=len(data)), cpu)


# --- augment ---

POLICIES: dict[str, dict[str, Any]] = {
    "autoaugment_cutout": dict(auto_augment="imagenet", cutout=16),
    "randaugment": dict(
        auto_augment="randaugment", randaugment_m=10, magnitude_std=0.5, randaugment_style="timm"
    ),
}


def _step_ms(ctx: Context) -> tuple[float | None, str]:
    """The fastest ResNet-50 step time this run measured (graph, else compile, else eager)."""
    for mode in ("graph", "compile", "eager"):
        rec = ctx.earlier("resnet50", mode)
        if rec and rec["status"] == "ok":
            return rec["detail"]["ms_per_step"], mode
    return None, ""


def stage_augment(ctx: Context) -> Iterator[dict[str, Any]]:
    from pipelines.augment import build_batch_augment

    dev = ctx.device
    batch, res = (4, 16) if ctx.dry_run else (256, 224)
    iters = 2 if ctx.dry_run else 20
    backend = "eager" if ctx.dry_run else "inductor"
    x, _ = images_batch(batch, res, dev)
    step_ms, step_mode = _step_ms(ctx)
    timer = Timer(dev)
    for name, kwargs in POLICIES.items():
        aug = build_batch_augment(**kwargs).to(dev)
        g = torch.Generator(device=dev).manual_seed(0)
        for _ in range(2):
            aug(x, generator=g)
        eager_s = timer.per_call(lambda aug=aug, g=g: aug(x, generator=g), iters)
        eager = record("augment", f"{name}_eager", 1e3 * eager_s, "ms/batch", **_fraction(eager_s, step_ms))
        yield eager
        if ctx.left() < (5 if ctx.dry_run else 45):
            yield record("augment", f"{name}_compiled", status="skipped", note="stage time cap reached")
            continue
        compiled = torch.compile(aug, fullgraph=True, dynamic=False, backend=backend)
        for _ in range(2):
            compiled(x)
        comp_s = timer.per_call(lambda compiled=compiled: compiled(x), iters)
        rec = record("augment", f"{name}_compiled", 1e3 * comp_s, "ms/batch", **_fraction(comp_s, step_ms))
        rec["detail"].update(step_mode=step_mode, batch=batch, res=res)
        yield with_ratio(rec, eager)


def _fraction(seconds: float, step_ms: float | None) -> dict[str, Any]:
    if step_ms is None:
        return {"fraction_of_step": None}
    return {"fraction_of_step": 1e3 * seconds / step_ms}
