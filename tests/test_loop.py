"""`train_one_epoch`'s contract with its loader, on a real tiny step: the two ways a loader can break it;
the host-lead bound of training and evaluation; which buffers evaluation broadcasts."""

from __future__ import annotations

import time

import pytest
import torch

from losses import build_loss
from pipelines.config import MAX_LEAD
from tests.helpers import ThreadDevice, ThreadEvent
from trainer.config import ModelConfig, OptimConfig, StepConfig
from trainer.lead import HostLead, NoLead
from trainer.loop import buffers_to_broadcast, evaluate, train_one_epoch
from trainer.models import build_classifier, rank_identical_buffers
from trainer.ncl_model import NCLModel
from trainer.optim import build_optimizer
from trainer.resnet_cifar import ResNetCifar
from trainer.step import TrainStep

COUNTS = (30, 10, 3)


class ListLoader:
    """A loader over fixed batches whose len() may disagree with what it yields (a broken backend)."""

    def __init__(self, batches, length=None):
        self.batches = batches
        self.length = len(batches) if length is None else length

    def __len__(self):
        return self.length

    def __iter__(self):
        return iter(self.batches)


def _step():
    torch.manual_seed(0)
    loss = build_loss("ce", COUNTS)
    model = build_classifier(
        ModelConfig(arch="resnet_tiny"), len(COUNTS), loss.head, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    return TrainStep(model, loss, build_optimizer(model, OptimConfig()), StepConfig(mode="eager"))


def _batches(n):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=g), torch.tensor([0, 1, 2, 0]))
        for _ in range(n)
    ]


def _run(loader):
    return train_one_epoch(_step(), loader, 0, epochs=1, optim=OptimConfig(), log_every=2, global_batch=4)


def test_an_epoch_reports_its_steps_and_loss():
    out = _run(ListLoader(_batches(3)))
    assert out["steps"] == 3 and out["loss"] > 0 and 0 <= out["train_top1"] <= 1
    assert out["lr"] == pytest.approx(OptimConfig().lr / OptimConfig().warmup_epochs)  # warm-up epoch 1


def test_an_empty_loader_says_to_lower_the_batch():
    with pytest.raises(ValueError, match="no full batch of 4 images per epoch: lower data.batch_size"):
        _run(ListLoader([]))


def test_a_loader_that_yields_fewer_batches_than_its_len_is_named():
    with pytest.raises(RuntimeError, match="gave 2 batches in epoch 1; len\\(\\) said 3"):
        _run(ListLoader(_batches(2), length=3))


class SlowCudaStep:
    """A step with TrainStep's interface whose device work takes ~2 ms (torch.cuda._sleep): a fast loader
    in front of it lets the host run ahead unless the loop bounds it. It measures the lead after each step."""

    def __init__(self):
        from tools.gpu_check_core import LeadMeter

        self.device = torch.device("cuda")
        self.meter = LeadMeter()
        self.acc = torch.zeros((), device="cuda")

    def set_lr(self, value):
        pass

    def __call__(self, images, labels):
        torch.cuda._sleep(2_000_000)
        self.acc.add_(images.float().mean())
        self.meter.mark()

    def read_metrics(self):
        return {"loss": float(self.acc), "steps": 1, "samples": 4, "top1": None}


@pytest.mark.gpu
def test_the_host_never_leads_the_gpu_by_more_than_two_steps():
    batches = [(torch.zeros(4, 3, 8, 8, device="cuda"), torch.zeros(4, dtype=torch.long, device="cuda"))] * 40
    step = SlowCudaStep()
    train_one_epoch(
        step, ListLoader(batches), 0, epochs=1, optim=OptimConfig(), log_every=1000, global_batch=4
    )
    assert step.meter.max <= 2  # the step just enqueued and at most one before it still running
    unbounded = SlowCudaStep()  # the same steps without the loop's ring: the host runs far ahead
    for images, labels in batches:
        unbounded(images, labels)
    assert unbounded.meter.max > 5


@pytest.mark.gpu
def test_evaluation_never_leads_the_gpu_by_more_than_max_lead_steps():
    batches = [(torch.zeros(4, 3, 8, 8, device="cuda"), torch.zeros(4, dtype=torch.long, device="cuda"))] * 40
    step = SlowCudaStep()
    evaluate(step, ListLoader(batches))  # the default bound: the device's ring
    assert step.meter.max <= MAX_LEAD


# --- evaluation's lead on a CPU twin of an asynchronous device ---


class SlowEvalStep:
    """EvalStep's interface; each call queues ~5 ms of work on the twin and measures the host's lead."""

    def __init__(self, device: ThreadDevice) -> None:
        from tools.gpu_check_core import LeadMeter

        self.twin = device
        self.device = torch.device("cpu")
        self.meter = LeadMeter(lambda: ThreadEvent(device))
        self.calls = 0

    def __call__(self, images, labels) -> None:
        self.calls += 1
        self.twin.submit(lambda: time.sleep(0.005))
        self.meter.mark()

    def read_metrics(self) -> dict:
        return {"samples": self.calls}


def test_the_ring_bounds_the_lead_of_the_evaluation_loop_cpu_twin():
    batches = [(None, None)] * 30  # a loader that is never the bottleneck
    free_device, bound_device = ThreadDevice(), ThreadDevice()
    free, bound = SlowEvalStep(free_device), SlowEvalStep(bound_device)
    evaluate(free, ListLoader(batches), NoLead())
    ring = HostLead(new_event=lambda: ThreadEvent(bound_device))
    report = evaluate(bound, ListLoader(batches), ring)
    assert report["samples"] == 30 and report["eval_time"] > 0
    assert free.meter.max > 5  # unbounded, the host queues far ahead of the slow device
    assert bound.meter.max <= MAX_LEAD and ring.max_lead == MAX_LEAD
    assert ring.waits > 0  # and it got there by waiting, not by luck


# --- evaluation's buffer broadcast ---


def test_evaluation_broadcasts_the_buffers_that_differ_between_ranks_only():
    """BatchNorm statistics differ per rank after training and are broadcast from rank 0; NCL's queues are
    equal on every rank by construction (and the largest buffers): left out, as DDP leaves them out."""
    model = NCLModel(
        5, body=lambda: ResNetCifar(1, (4, 8, 16)), mean=(0.5,) * 3, std=(0.25,) * 3, moco_dim=6, queue_size=8
    )
    names = {id(buf): name for name, buf in model.named_buffers()}
    sent = {names[id(buf)] for buf in buffers_to_broadcast(model)}
    same = set(rank_identical_buffers(model))
    assert same == {"queues", "queue_ptr"}
    assert sent == set(names.values()) - same
    assert any(name.endswith("running_mean") for name in sent)
    plain = build_classifier(ModelConfig(arch="resnet_tiny"), 3, "linear", mean=(0.5,) * 3, std=(0.25,) * 3)
    assert len(buffers_to_broadcast(plain)) == len(list(plain.buffers()))
