"""The tools' per-class counts, all from CIFAR-LT's exponential profile (`cifar_lt_counts`, the one home of
the formula, LDAM-DRW's float for float): the demo set, the conversion bench's images, the benches' labels."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.convert.readers.cifar import cifar_lt_counts

# ImageNet-LT's training counts run from 1280 images (head) to 5 (tail): imbalance 256. The loss and step
# benches draw their class counts from this range at any class count, so count-dependent terms (DBM and LDAM
# margins, DRW weights) are as spread as on a real long-tailed set.
IMAGENET_LT_N_MAX, IMAGENET_LT_IMBALANCE = 1280, 256.0


def long_tail_counts(num_classes: int, n_max: int, imbalance: float) -> list[int]:
    """Class 0 keeps n_max, the last n_max / imbalance. A wrapper of `cifar_lt_counts` (which takes n_max
    first) that keeps at least one image a class: a generated class with no image would fail conversion."""
    if not imbalance >= 1:  # checked here too, so that the message names this argument, not --imb-ratio
        raise ValueError(f"imbalance must be >= 1 (n_max / n_min), got {imbalance}")
    if num_classes == 1:
        return [n_max]
    return [max(1, n) for n in cifar_lt_counts(n_max, num_classes, imbalance)]


def imagenet_lt_counts(num_classes: int) -> list[int]:
    """`num_classes` counts spread over ImageNet-LT's range (1280 down to 5)."""
    return long_tail_counts(num_classes, IMAGENET_LT_N_MAX, IMAGENET_LT_IMBALANCE)


@dataclass(frozen=True)
class LongTailMeta:
    """What `trainer.build.build_parts` reads of a dataset's meta, for a synthetic long tail."""

    class_counts: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)


def imagenet_lt_meta(num_classes: int) -> LongTailMeta:
    return LongTailMeta(tuple(imagenet_lt_counts(num_classes)))
