"""Per-class accuracy accumulated on the device, reduced across ranks, summarised on the host.

The accumulators are fixed [C] buffers updated with `index_add_` (never `bincount`, whose output size comes
from a host read of the max): static shapes and no host sync, so they live inside a compiled or captured
step. Counts are float32, exact up to 2**24 per class between reads (far above any eval set or log interval).

Shot groups (as in both papers and their baselines) come from the TRAINING counts: many > 100 images,
medium 20..100 inclusive, few < 20. A group's accuracy is the unweighted mean of its classes' accuracies;
a group with no evaluated class is None, never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

MANY_ABOVE = 100  # many: n > 100
FEW_BELOW = 20  # few: n < 20; medium: 20 <= n <= 100


def shot_group(n: int) -> str:
    return "many" if n > MANY_ABOVE else ("few" if n < FEW_BELOW else "medium")


def shot_groups(class_counts: Sequence[int]) -> dict[str, list[int]]:
    """Class indices of each group, from per-class training counts."""
    groups: dict[str, list[int]] = {"many": [], "medium": [], "few": []}
    for c, n in enumerate(class_counts):
        groups[shot_group(int(n))].append(c)
    return groups


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum `t` across ranks in place when a process group is up (Accelerate initialises torch.distributed);
    a no-op on one process. Collective: every rank must call it at the same point."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class ClassAccumulator:
    """Device-side per-class sample / correct counts and a loss sum, for a fixed number of classes."""

    def __init__(self, num_classes: int, device: torch.device | str) -> None:
        if num_classes < 1:
            raise ValueError(f"ClassAccumulator: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        # Separate tensors (not views of one buffer): aliased inputs complicate compiled in-place updates.
        self.count = torch.zeros(num_classes, device=device)
        self.correct = torch.zeros(num_classes, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.steps = torch.zeros((), device=device)

    def update(self, logits: Tensor, target: Tensor) -> None:
        """Count predictions = argmax(logits) against `target` (no host sync)."""
        hit = (logits.argmax(dim=1) == target).to(self.count.dtype)
        self.count.index_add_(0, target, torch.ones_like(hit))
        self.correct.index_add_(0, target, hit)

    def add_loss(self, loss: Tensor) -> None:
        self.loss_sum.add_(loss.detach().to(self.loss_sum.dtype))
        self.steps.add_(1.0)

    def reset(self) -> None:
        # In place: a captured graph keeps writing to the same memory.
        torch._foreach_zero_([self.count, self.correct, self.loss_sum, self.steps])

    def read(self, reduce: bool = True) -> dict[str, Any]:
        """Host sync (and one collective when `reduce` and distributed): totals since the last reset."""
        total = torch.cat([self.count, self.correct, self.loss_sum[None], self.steps[None]])
        if reduce:
            all_reduce_sum(total)
        values = total.cpu().tolist()
        c = self.num_classes
        return {
            "count": values[:c],
            "correct": values[c : 2 * c],
            "loss_sum": values[2 * c],
            "steps": values[2 * c + 1],
        }


def accuracy_report(
    count: Sequence[float], correct: Sequence[float], class_counts: Sequence[int]
) -> dict[str, Any]:
    """top1 (sample-averaged), per-class accuracy (None for a class never seen), and many / medium / few as
    unweighted means of per-class accuracies over the classes evaluated in each group (None if none).
    Values are fractions in [0, 1]."""
    if not (len(count) == len(correct) == len(class_counts)):
        raise ValueError(
            f"accuracy_report: {len(count)} counts, {len(correct)} correct and "
            f"{len(class_counts)} training class counts; all must be one per class"
        )
    per_class = [(k / n if n > 0 else None) for k, n in zip(correct, count, strict=True)]
    samples = sum(count)
    report: dict[str, Any] = {
        "top1": (sum(correct) / samples if samples > 0 else None),
        "samples": int(samples),
    }
    for group, classes in shot_groups(class_counts).items():
        accs = [per_class[c] for c in classes if per_class[c] is not None]
        report[group] = sum(accs) / len(accs) if accs else None
        report[f"{group}_classes"] = len(classes)
    report["per_class"] = per_class
    return report
