"""Batched AutoAugment (+ Cutout) against torchvision's per-image `transforms.v2.AutoAugment` loop.

    python -m tools.bench_augment --device cpu --batch 64 --res 224
    python -m tools.bench_augment --device cuda --batch 256 --res 224 --resnet50 --compile

Both run in the same process on the same uint8 batch (channels_last, on `--device`). Timing is
tools/timer.py: a warm-up off the clock; on CUDA, CUDA events and one synchronisation per measurement, never
per image. With `--resnet50` it also times one bf16 channels_last ResNet-50 training step on the batch, to
express the augmentation as a fraction of a step (the goal: AutoAugment + Cutout under 10% of it).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch

from pipelines.augment import Normalize, build_batch_augment
from pipelines.config import IMAGENET_MEAN, IMAGENET_STD
from tools.output import add_json_flag, record, write_json
from tools.timer import Timer


def _resnet50_step(batch: torch.Tensor) -> Callable[[], object]:
    """One SGD step of torchvision's ResNet-50, bf16 autocast, channels_last, on a normalised batch."""
    import torchvision

    model = torchvision.models.resnet50().to(batch.device, memory_format=torch.channels_last)
    norm = Normalize(IMAGENET_MEAN, IMAGENET_STD).to(batch.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    labels = torch.randint(1000, (batch.shape[0],), device=batch.device)

    def step() -> None:
        with torch.autocast(batch.device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(norm(batch)), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run(
    device: str = "cpu",
    batch: int = 64,
    res: int = 224,
    *,
    policy: str = "imagenet",
    cutout: int = 16,
    iters: int = 10,
    warmup: int = 2,
    loop_iters: int = 2,
    resnet50: bool = False,
    compile: bool = False,
) -> dict:
    """Time the batched and the per-image paths on one batch; returns the figures as a dict."""
    from torchvision.transforms import v2

    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, device=dev, generator=g)
    images = images.contiguous(memory_format=torch.channels_last)
    timer = Timer(dev)

    policy_enum = {"imagenet": v2.AutoAugmentPolicy.IMAGENET, "cifar10": v2.AutoAugmentPolicy.CIFAR10}[policy]
    per_image = v2.AutoAugment(policy_enum, fill=128)
    batched_aa = build_batch_augment(auto_augment=policy).to(dev)
    batched_aa_cutout = build_batch_augment(auto_augment=policy, cutout=cutout).to(dev)

    def loop() -> torch.Tensor:
        return torch.stack([per_image(img) for img in images])

    cases: dict[str, Callable[[], object]] = {
        "batched_autoaugment": lambda: batched_aa(images, generator=g),
        "batched_autoaugment_cutout": lambda: batched_aa_cutout(images, generator=g),
        "torchvision_loop_autoaugment": loop,
    }
    if compile:
        # draws stay eager (they take the generator); the ops, a pure function of the draws, are compiled
        policy_module = batched_aa.stages[0]
        apply = torch.compile(policy_module.apply, fullgraph=True)
        cases["batched_autoaugment_compiled"] = lambda: apply(images, policy_module.draw(batch, res, res, g))
    if resnet50:
        cases["resnet50_step"] = _resnet50_step(images)
    ms = {}
    for name, fn in cases.items():
        timer.warm_up(fn, warmup)
        ms[name] = 1e3 * timer.per_call(fn, loop_iters if name.startswith("torchvision") else iters)

    out = {
        "threads": torch.get_num_threads(),
        "batch": batch,
        "res": res,
        "policy": policy,
        "cutout": cutout,
        "ms": {k: round(v, 3) for k, v in ms.items()},
        "speedup_vs_torchvision_loop": round(
            ms["torchvision_loop_autoaugment"] / ms["batched_autoaugment"], 2
        ),
    }
    if resnet50:
        out["autoaugment_cutout_fraction_of_resnet50_step"] = round(
            ms["batched_autoaugment_cutout"] / ms["resnet50_step"], 4
        )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--policy", default="imagenet", choices=("imagenet", "cifar10"))
    p.add_argument("--cutout", type=int, default=16)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--loop-iters", type=int, default=2, help="timed calls of the (slow) per-image loop")
    p.add_argument("--resnet50", action="store_true", help="also time a ResNet-50 training step on the batch")
    p.add_argument("--compile", action="store_true", help="also time the ops compiled (draws stay eager)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    add_json_flag(p)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    result = run(
        a.device,
        a.batch,
        a.res,
        policy=a.policy,
        cutout=a.cutout,
        iters=a.iters,
        warmup=a.warmup,
        loop_iters=a.loop_iters,
        resnet50=a.resnet50,
        compile=a.compile,
    )
    print(json.dumps(result, indent=2))
    write_json(a.json, record(result, a.device))


if __name__ == "__main__":
    main()
