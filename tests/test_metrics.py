"""Per-class accumulators (index_add_ into fixed buffers) and the many / medium / few summary."""

from __future__ import annotations

import pytest
import torch

from trainer.metrics import ClassAccumulator, accuracy_report, shot_group, shot_groups


def test_shot_group_boundaries():
    assert [shot_group(n) for n in (5000, 101, 100, 20, 19, 1)] == [
        "many",
        "many",
        "medium",
        "medium",
        "few",
        "few",
    ]


def test_cifar100_lt_if100_groups():
    # CIFAR-100-LT at imbalance 100: n_i = floor(500 * 0.01 ** (i / 99)) -> 35 / 35 / 30 classes
    counts = [int(500 * 0.01 ** (i / 99)) for i in range(100)]
    assert sum(counts) == 10_847
    groups = shot_groups(counts)
    assert [len(groups[g]) for g in ("many", "medium", "few")] == [35, 35, 30]


def test_accuracy_report_hand_made():
    train_counts = [500, 150, 60, 20, 10, 5]  # many: 0, 1; medium: 2, 3; few: 4, 5
    count = [10, 10, 10, 10, 10, 0]  # class 5 absent from this eval set
    correct = [9, 7, 5, 3, 1, 0]
    r = accuracy_report(count, correct, train_counts)
    assert r["top1"] == pytest.approx(25 / 50) and r["samples"] == 50
    assert r["per_class"] == pytest.approx([0.9, 0.7, 0.5, 0.3, 0.1, None])
    assert r["many"] == pytest.approx(0.8)
    assert r["medium"] == pytest.approx(0.4)
    assert r["few"] == pytest.approx(0.1)  # the unevaluated class does not count as 0
    assert (r["many_classes"], r["medium_classes"], r["few_classes"]) == (2, 2, 2)


def test_absent_group_is_none_not_nan():
    r = accuracy_report([4, 4], [4, 2], [500, 50])  # no class under 20 training images
    assert r["few"] is None and r["few_classes"] == 0
    assert r["many"] == 1.0 and r["medium"] == 0.5
    r = accuracy_report([0, 0], [0, 0], [500, 50])
    assert r["top1"] is None and r["many"] is None and r["medium"] is None


def test_accuracy_report_length_mismatch():
    with pytest.raises(ValueError, match="one per class"):
        accuracy_report([1, 2], [1, 2], [10, 20, 30])


def test_class_accumulator():
    acc = ClassAccumulator(4, "cpu")
    logits = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 5.0, 0, 0], [0, 0, 0, 5.0], [5.0, 0, 0, 0]])
    target = torch.tensor([0, 1, 2, 3, 3])
    acc.update(logits, target)
    acc.update(logits[:2], target[:2])
    acc.add_loss(torch.tensor(2.0))
    acc.add_loss(torch.tensor(4.0))
    r = acc.read()
    assert r["count"] == [2, 2, 1, 2] and r["correct"] == [2, 2, 0, 1]
    assert r["loss_sum"] == 6.0 and r["steps"] == 2
    buffers = [acc.count.data_ptr(), acc.loss_sum.data_ptr()]
    acc.reset()
    assert acc.read()["count"] == [0, 0, 0, 0] and acc.read()["loss_sum"] == 0
    assert [acc.count.data_ptr(), acc.loss_sum.data_ptr()] == buffers  # reset in place (graph-safe)
