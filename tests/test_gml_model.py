"""The GML student (trainer/gml_model.py): the class-balanced queue against the released layout and a plain
loop, the frozen teacher, similarities taken after the enqueue, state_dict round trip, the temperature's
weight-decay opt-out, compiled == eager, two processes sharing one queue, and a GPU step without host syncs.
The teacher's loading is in tests/test_teacher.py."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

from losses import build_loss
from losses.output import MoCoOutput, ModelOutput
from tests.helpers import run_ranks
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.config import ConfigError, ModelConfig, OptimConfig
from trainer.gml_model import ClassBalancedQueue, GMLStudent, queue_layout
from trainer.models import build_classifier
from trainer.optim import build_optimizer, param_groups

COUNTS = [20, 10, 5, 3]  # K = 16, base 2: sizes [7, 4, 3, 2] (worked out below)
TINY = ModelConfig(arch="resnet_tiny", channels_last=False)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tiny(num_classes=4, head="cosine"):
    return build_classifier(TINY, num_classes, head, mean=MEAN, std=STD)


def make_student(seed=0, **kw):
    torch.manual_seed(seed)
    teacher = tiny()
    return GMLStudent(tiny(), teacher, COUNTS, **{"queue_size": 16, "base_k": 2, "embed_dim": 8, **kw})


def batch(labels, seed=0, size=16, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (3 * len(labels), 3, size, size), dtype=torch.uint8, generator=g)
    return images.to(device), torch.tensor(labels, device=device)


# --- layout and update -----------------------------------------------------------------------------------
def released_layout(counts, k, base_k):
    """MoCo.set_cls_weight of GML/moco/builder.py, transcribed (float32, as released)."""
    c = len(counts)
    cls_weight = torch.Tensor(counts)
    cls_weight = cls_weight / cls_weight.sum()
    position = torch.arange(1, c + 1) * base_k + (k - c * base_k) * cls_weight.cumsum(0)
    end = position.ceil().long()
    start = end.clone()
    start[1:] = start[:-1].clone()
    start[0] = 0
    return start, end - start


def test_layout_hand_worked_and_as_released():
    # 4 classes x 2 base slots, 8 shared by the prior [20, 10, 5, 3] / 38: boundaries
    # ceil(2 + 8*20/38) = 7, ceil(4 + 8*30/38) = 11, ceil(6 + 8*35/38) = 14, 16.
    starts, sizes = queue_layout(COUNTS, 16, 2)
    assert starts.tolist() == [0, 7, 11, 14] and sizes.tolist() == [7, 4, 3, 2]
    cifar100_if100 = [int(500 * 0.01 ** (i / 99)) for i in range(100)]
    cifar100_if10 = [int(500 * 0.1 ** (i / 99)) for i in range(100)]
    for counts, k, base in ((cifar100_if100, 4096, 2), (cifar100_if10, 4096, 2), (COUNTS, 16, 2)):
        starts, sizes = queue_layout(counts, k, base)
        want_starts, want_sizes = released_layout(counts, k, base)
        assert starts.tolist() == want_starts.tolist() and sizes.tolist() == want_sizes.tolist()
        assert sizes.sum() == k and sizes.min() >= base
    assert queue_layout(cifar100_if100, 4096, 2)[1][[0, -1]].tolist() == [182, 3]
    with pytest.raises(ConfigError, match=r"model.gml_queue_size=7: .* 4 classes, at least 8"):
        queue_layout(COUNTS, 7, 2)


def reference_push(keys, ids, pointers, starts, sizes, batch_keys, labels, batch_ids):
    """The released `_dequeue_and_enqueue_w_base`, as a plain loop over the batch (lists, in place)."""
    seen = defaultdict(int)
    for key, label, i in zip(batch_keys, labels, batch_ids, strict=True):
        rank = seen[label]
        seen[label] += 1
        if rank >= sizes[label]:
            continue  # the class's room is full for this batch: later keys are dropped
        slot = starts[label] + (pointers[label] + rank) % sizes[label]
        keys[slot], ids[slot] = key, i
    for label, count in seen.items():
        pointers[label] = (pointers[label] + min(count, sizes[label])) % sizes[label]


def test_push_matches_a_plain_loop():
    torch.manual_seed(0)
    queue = ClassBalancedQueue(COUNTS, 16, 2, dim=3)
    keys, ids = queue.keys[:16].tolist(), queue.ids[:16].tolist()
    pointers, starts, sizes = [0] * 4, queue.starts.tolist(), queue.sizes.tolist()
    assert ids == list(range(-16, 0))
    g = torch.Generator().manual_seed(1)
    next_id = 0
    for step in range(8):
        # Class 3 (2 slots) and class 2 (3 slots) often overflow within one batch of 8.
        labels = torch.multinomial(torch.tensor([0.2, 0.2, 0.3, 0.3]), 8, replacement=True, generator=g)
        batch_keys = torch.randn(8, 3, generator=g)
        batch_ids = torch.arange(next_id, next_id + 8)
        next_id += 8
        queue.push(batch_keys, labels, batch_ids)
        reference_push(
            keys, ids, pointers, starts, sizes, batch_keys.tolist(), labels.tolist(), batch_ids.tolist()
        )
        assert queue.keys[:16].tolist() == keys, step
        assert queue.ids[:16].tolist() == ids and queue.pointers.tolist() == pointers, step
    assert min(ids) >= 0  # every slot refilled


# --- the student ------------------------------------------------------------------------------------------
def test_teacher_frozen_in_eval_and_unchanged_by_a_step():
    model = make_student()
    model.train()
    assert model.training and model.student.training
    assert not any(m.training for m in model.teacher.modules())
    assert not any(p.requires_grad for p in model.teacher.parameters())
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}  # BN statistics too
    student_before = {k: v.clone() for k, v in model.named_parameters() if v.requires_grad}
    optimizer = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=5e-4))
    images, labels = batch([0, 1, 2, 3])
    loss = build_loss("dbm_gml", COUNTS)(model(images, labels), labels)
    loss.backward()
    optimizer.step()
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert all(p.grad is None for p in model.teacher.parameters())
    moved = {
        k for k, v in model.named_parameters() if v.requires_grad and not torch.equal(v, student_before[k])
    }
    assert moved == set(student_before)  # every trainable parameter moved: body, head, both projections, T_c
    assert "log_temperature" in moved and any(k.startswith("embed_k.") for k in moved)


def test_similarities_use_the_queue_after_this_batchs_keys():
    model = make_student()
    model.train()
    images, labels = batch([0, 1, 3, 3])  # class 3 has exactly 2 slots: nothing dropped
    before = model.queue.keys[:16].clone()
    out = model(images, labels)
    assert isinstance(out, MoCoOutput)
    n = 4
    with torch.no_grad():
        keys = model.teacher(images[2 * n :]).features
        teacher_logits = model.teacher(images[:n]).logits
        query = F.normalize(model.embed_q(model.student(images[: 2 * n]).features[n:]), dim=1)
        after = model.queue.keys[:16]
        want = query @ F.normalize(model.embed_k(after), dim=1).T
        stale = query @ F.normalize(model.embed_k(before), dim=1).T
    torch.testing.assert_close(out.queue_similarities, want)
    torch.testing.assert_close(out.teacher_logits, teacher_logits)
    slots = [row.nonzero().flatten().tolist() for row in out.own_keys]
    assert [len(s) for s in slots] == [1, 1, 1, 1]  # each query's own key is in the queue
    starts, sizes = model.queue.starts, model.queue.sizes
    for i, (slot,) in enumerate(slots):
        assert starts[labels[i]] <= slot < starts[labels[i]] + sizes[labels[i]]
        torch.testing.assert_close(after[slot], keys[i])
        assert not torch.allclose(out.queue_similarities[i, slot], stale[i, slot])
    assert model.queue.ids[:16][out.own_keys.any(0)].tolist() == [0, 1, 2, 3]
    assert out.queue_sizes is model.queue.sizes and out.temperature.item() == pytest.approx(0.1)
    # The next batch's ids continue: 4..7.
    out = model(*batch([2, 2, 1, 0], seed=1))
    assert sorted(model.queue.ids[:16][out.own_keys.any(0)].tolist()) == [4, 5, 6, 7]
    # Eval: the student alone, raw cosines of one view.
    model.eval()
    plain = model(images[:n])
    assert isinstance(plain, ModelOutput) and plain.logits.shape == (n, 4) and plain.logits.abs().max() <= 1


def test_training_needs_three_views_and_labels():
    model = make_student().train()
    images, labels = batch([0, 1])
    with pytest.raises(ValueError, match="3 views"):
        model(images)
    with pytest.raises(ValueError, match="3 views"):
        model(images[:4], labels)


def test_state_dict_round_trip_restores_the_queue(tmp_path):
    a = make_student(seed=0).train()
    for seed in range(3):
        a(*batch([0, 1, 2, 3], seed=seed))
    state = a.state_dict()
    assert {"queue.keys", "queue.ids", "queue.pointers", "steps", "log_temperature"} <= set(state)
    assert not {"queue.starts", "queue.sizes"} & set(state)  # derived from the class counts
    save_checkpoint(tmp_path / "last.pt", {"model": state})  # the trainer's own format, weights_only load
    b = make_student(seed=1).train()
    b.load_state_dict(load_checkpoint(tmp_path / "last.pt")["model"])
    for name in ("keys", "ids", "pointers"):
        assert torch.equal(getattr(a.queue, name), getattr(b.queue, name))
    assert a.steps.item() == b.steps.item() == 3 and not a.queue.pointers.eq(0).all()
    images, labels = batch([3, 2, 2, 0], seed=7)
    for x, y in zip(a(images, labels), b(images, labels), strict=True):
        assert torch.equal(x, y)


def test_temperature_gets_no_weight_decay():
    model = make_student()
    decay, no_decay = param_groups(model, 5e-4, decay_norm_and_bias=True)
    assert [p is model.log_temperature for p in no_decay["params"]] == [True] and no_decay[
        "weight_decay"
    ] == 0.0
    frozen = {id(p) for p in model.teacher.parameters()}
    assert not frozen & {id(p) for p in decay["params"]} and decay["weight_decay"] == 5e-4
    # With norm/bias exemption on, T_c joins that group; the flag survives `.to()`.
    model.to(torch.float64)
    _, no_decay = param_groups(model, 5e-4, decay_norm_and_bias=False)
    assert any(p is model.log_temperature for p in no_decay["params"])
    # The optimizer leaves an opted-out parameter alone where weight decay shrinks the others.
    net = nn.Linear(2, 2, bias=False)
    net.t = nn.Parameter(torch.ones(()))
    net.t.no_weight_decay = True
    opt = build_optimizer(net, OptimConfig(lr=0.5, weight_decay=0.1, momentum=0.0))
    weight = net.weight.detach().clone()
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert net.t.item() == 1.0
    torch.testing.assert_close(net.weight, weight * (1 - 0.5 * 0.1))


# --- compiled, distributed, GPU --------------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_student_equals_eager():
    torch._dynamo.reset()
    counters.clear()
    eager, compiled = make_student(seed=0).train(), make_student(seed=0).train()
    compiled.compile(backend="aot_eager", dynamic=False, fullgraph=True)
    loss_fn = build_loss("dbm_gml", COUNTS)
    for seed, labels in enumerate(([0, 1, 3, 3], [2, 2, 2, 2], [1, 0, 3, 2])):
        images, y = batch(labels, seed=seed)
        outs = []
        for model in (eager, compiled):
            model.zero_grad(set_to_none=True)
            out = model(images, y)
            loss_fn(out, y).backward()
            outs.append((out, [p.grad for p in model.parameters() if p.requires_grad]))
        (out_e, grads_e), (out_c, grads_c) = outs
        for a, b in zip(out_e, out_c, strict=True):
            torch.testing.assert_close(a, b)
        for a, b in zip(grads_e, grads_c, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        for name, buf in eager.named_buffers():
            torch.testing.assert_close(buf, dict(compiled.named_buffers())[name], msg=name)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def _two_process_worker(rank: int, world: int) -> dict:
    model = make_student(seed=0).train()  # the same weights and initial queue on both ranks
    images, labels = batch([[0, 3], [3, 1]][rank], seed=rank)
    out = model(images, labels)
    with torch.no_grad():
        keys = model.teacher(images[4:]).features
    queue = dict(model.queue.named_buffers())
    return {"queue": queue, "own": out.own_keys, "keys": keys, "steps": model.steps}


@pytest.mark.slow
def test_two_processes_share_one_queue():
    """Every rank enqueues every rank's keys (gathered in rank order): the queues stay identical and equal
    the queue of one process given the whole batch."""
    r0, r1 = run_ranks(_two_process_worker, 2)
    for name in ("keys", "ids", "pointers"):
        assert torch.equal(r0["queue"][name], r1["queue"][name]), name
    single = make_student(seed=0).train()
    (i0, y0), (i1, y1) = batch([0, 3], seed=0), batch([3, 1], seed=1)
    images = torch.cat([i0[:2], i1[:2], i0[2:4], i1[2:4], i0[4:], i1[4:]])  # one batch of 4, view-major
    single(images, torch.cat([y0, y1]))
    for name in ("keys", "ids", "pointers"):
        torch.testing.assert_close(r0["queue"][name], getattr(single.queue, name), msg=name)
    # Rank r's queries are images 2r, 2r + 1 of the step: their own keys carry those ids.
    for rank, r in enumerate((r0, r1)):
        ids = r["queue"]["ids"][:16]
        own_slots = [row.nonzero().item() for row in r["own"]]
        assert ids[own_slots].tolist() == [2 * rank, 2 * rank + 1]
        torch.testing.assert_close(r["queue"]["keys"][own_slots], r["keys"])


@pytest.mark.gpu
def test_gpu_step_without_host_syncs():
    model = make_student(seed=0).cuda().train()
    loss_fn = build_loss("dbm_gml", COUNTS).cuda()
    optimizer = build_optimizer(model, OptimConfig(lr=0.1))
    batches = [batch([0, 1, 3, 3], seed=s, size=32, device="cuda") for s in range(3)]

    def step(images, labels):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images, labels), labels).backward()
        optimizer.step()

    step(*batches[0])  # first-call allocations and cuDNN set-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for images, labels in batches[1:]:
            step(images, labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert model.steps.item() == 3 and torch.isfinite(model.log_temperature).item()
