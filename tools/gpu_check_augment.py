"""Stage `augment`: the batched augmentations at 224 px, batch 256, eager and compiled as a whole, and as a
fraction of the ResNet-50 step measured by the `resnet50` stage of the same run (goal: AutoAugment +
Cutout < 5% of a step).

Eager runs draw from an explicit device generator, as the loader calls them; the compiled module draws
from the global RNG (Dynamo does not trace a Generator argument), on the same fixed shape every call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from tools.gpu_check_core import Clock, Context, images_batch, record, with_ratio

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
    clock = Clock(dev)
    for name, kwargs in POLICIES.items():
        aug = build_batch_augment(**kwargs).to(dev)
        g = torch.Generator(device=dev).manual_seed(0)
        for _ in range(2):
            aug(x, generator=g)
        eager_s = clock(lambda aug=aug, g=g: aug(x, generator=g), iters)
        eager = record("augment", f"{name}_eager", 1e3 * eager_s, "ms/batch", **_fraction(eager_s, step_ms))
        yield eager
        if ctx.left() < (5 if ctx.dry_run else 45):
            yield record("augment", f"{name}_compiled", status="skipped", note="stage time cap reached")
            continue
        compiled = torch.compile(aug, fullgraph=True, dynamic=False, backend=backend)
        for _ in range(2):
            compiled(x)
        comp_s = clock(lambda compiled=compiled: compiled(x), iters)
        rec = record("augment", f"{name}_compiled", 1e3 * comp_s, "ms/batch", **_fraction(comp_s, step_ms))
        rec["detail"].update(step_mode=step_mode, batch=batch, res=res)
        yield with_ratio(rec, eager)


def _fraction(seconds: float, step_ms: float | None) -> dict[str, Any]:
    if step_ms is None:
        return {"fraction_of_step": None}
    return {"fraction_of_step": 1e3 * seconds / step_ms}
