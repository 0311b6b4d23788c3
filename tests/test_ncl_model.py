"""The NCL model (trainer/ncl_model.py): EMA and queue against plain loops, the queue read before the
enqueue, shuffle-BN, evaluation by the experts' mean, checkpointed state, compiled == eager, CUDA graphs, and
the queues under DDP in two processes."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from losses import build_loss, loss_class
from losses.heads import CosineClassifier
from losses.output import ExpertOutput
from tests.helpers import run_ranks
from trainer.config import ConfigError, ModelConfig
from trainer.models import build_model, check_model, rank_identical_buffers
from trainer.ncl_model import NCLModel, saved_copy
from trainer.optim import param_groups
from trainer.resnet_cifar import ResNetCifar

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
C, N, Q, E = 5, 4, 8, 6  # classes, images per view, queue size, MoCo dimension
COUNTS = [40, 20, 9, 4, 2]


def tiny(seed: int = 0, **kw) -> NCLModel:
    torch.manual_seed(seed)
    body = lambda: ResNetCifar(1, (4, 8, 16))  # noqa: E731
    options = dict(body=body, mean=MEAN, std=STD, moco_dim=E, queue_size=Q)
    return NCLModel(C, **{**options, **kw})


def dbm_ncl(**overrides):
    """The dbm_ncl loss as the recipes build it (s = 16), with the mask's k for 5 classes."""
    return build_loss("dbm_ncl", COUNTS, **{"scale": 16.0, "ncl_hcm_n": 3, **overrides})


def batch(seed: int = 0, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2 * n, 3, 8, 8), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, C, (n,), generator=g)


def reference_keys(model: NCLModel, images: torch.Tensor) -> torch.Tensor:
    """Keys of view 1 through a copy of the key branch, unshuffled (train-mode BN: order-independent)."""
    ref = copy.deepcopy(model).train()
    x = ref.normalize(images[images.shape[0] // 2 :])
    with torch.no_grad():
        return torch.stack(
            [F.normalize(p(b(x)), dim=1) for b, p in zip(ref.key_bodies, ref.key_projectors, strict=True)]
        )


def reference_queries(model: NCLModel, images: torch.Tensor) -> torch.Tensor:
    ref = copy.deepcopy(model).train()
    x = ref.normalize(images[: images.shape[0] // 2])
    with torch.no_grad():
        return torch.stack(
            [F.normalize(p(b(x)), dim=1) for b, p in zip(ref.bodies, ref.projectors, strict=True)]
        )


def test_shapes_train_and_eval():
    model = tiny()
    images, _ = batch()
    out = model(images)
    assert isinstance(out, ExpertOutput)
    assert out.features.shape == (N, 3 * 16) and out.logits.shape == (N, C)
    assert out.expert_logits.shape == (3, N, C) and out.contrast_logits.shape == (3, N, 1 + Q)
    assert all(t.dtype == torch.float32 for t in out)
    assert out.expert_logits.abs().max() <= 1 + 1e-6  # raw cosines, no scale
    model.eval()
    out = model(images[:3])  # one view, any size
    assert out.logits.shape == (3, C) and out.expert_logits.shape == (3, 3, C) and out.contrast_logits is None
    labels = torch.tensor([0, 1, 2])
    assert torch.equal(model(images[:3], labels).logits, out.logits)  # labels are taken and ignored


def test_evaluation_averages_the_experts_and_changes_no_state():
    model = tiny().eval()
    images, _ = batch()
    state = copy.deepcopy(model.state_dict())
    out = model(images)
    x = model.normalize(images)
    with torch.no_grad():
        experts = torch.stack([c(b(x)) for b, c in zip(model.bodies, model.classifiers, strict=True)])
    torch.testing.assert_close(out.expert_logits, experts)
    torch.testing.assert_close(out.logits, experts.mean(dim=0))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("experts", [3, 2])
def test_ema_equals_the_released_loop(experts):
    model = tiny(experts=experts)
    images, _ = batch()
    before = copy.deepcopy(model)
    key_body = copy.deepcopy(model.key_bodies[1])
    model(images)
    # dbm_ltr:cifar/train/train_fn/ncl.py:43-50: for each of the K experts, every key body is updated.
    with torch.no_grad():
        for _net_id in range(experts):
            for ema, p in zip(before.key_bodies.parameters(), before.bodies.parameters(), strict=True):
                ema.mul_(0.999).add_(p, alpha=1 - 0.999)
    for (name, got), want in zip(
        model.key_bodies.named_parameters(), before.key_bodies.parameters(), strict=True
    ):
        assert torch.equal(got, want), name
    # The bodies themselves are untouched; the key bodies' BN statistics come from their own forward.
    for got, want in zip(model.bodies.parameters(), before.bodies.parameters(), strict=True):
        assert torch.equal(got, want)
    key_body(model.normalize(images[N:]))
    torch.testing.assert_close(model.key_bodies[1].bn1.running_var, key_body.bn1.running_var)
    assert not torch.allclose(model.key_bodies[1].bn1.running_var, model.bodies[1].bn1.running_var)


def test_queue_and_pointer_follow_a_plain_loop_with_wrap_around():
    model = tiny()
    queue = [[row.clone() for row in expert] for expert in model.queues]  # K lists of Q keys
    ptr = 0
    for step in range(3):  # 3 batches of 4 into a queue of 8: the third overwrites the first
        images, _ = batch(seed=step)
        keys = reference_keys(model, images)
        model(images)
        for k in range(3):
            for j in range(N):
                queue[k][ptr + j] = keys[k, j]
        ptr = (ptr + N) % Q
        torch.testing.assert_close(
            model.queues, torch.stack([torch.stack(e) for e in queue]), atol=1e-5, rtol=0
        )
        assert model.queue_ptr.item() == ptr and model.queue_ptr.dtype == torch.long


def test_contrast_uses_the_queue_before_the_enqueue():
    model = tiny(queue_size=N)  # the whole queue is replaced by every batch
    images, _ = batch()
    before = model.queues.clone()
    q, k = reference_queries(model, images), reference_keys(model, images)
    out = model(images)
    torch.testing.assert_close(out.contrast_logits[..., 0], (q * k).sum(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.contrast_logits[..., 1:], q @ before.transpose(1, 2), atol=1e-5, rtol=0)
    after = q @ model.queues.transpose(1, 2)
    assert not torch.allclose(out.contrast_logits[..., 1:], after, atol=1e-3)
    torch.testing.assert_close(model.queues, k, atol=1e-5, rtol=0)


def test_shuffle_bn_one_device_permutation_shared_by_the_experts():
    model = tiny()
    plain = copy.deepcopy(model)
    plain.shuffle_bn = False
    seen: dict[str, list[torch.Tensor]] = {"shuffled": [], "plain": []}
    for name, m in (("shuffled", model), ("plain", plain)):
        for body in m.key_bodies:
            body.register_forward_pre_hook(lambda mod, args, name=name: seen[name].append(args[0].clone()))
    images, _ = batch(n=8)  # 8 images per view: a permutation worth checking; 8 divides the queue
    out, out_plain = model(images), plain(images)
    x = model.normalize(images[8:])
    shuffled = seen["shuffled"]
    assert len(shuffled) == 3 and all(torch.equal(s, shuffled[0]) for s in shuffled)  # one for all experts
    order = [int((x == row).all(dim=(1, 2, 3)).nonzero()) for row in shuffled[0]]
    assert sorted(order) == list(range(8)) and order != list(range(8))  # a real permutation of view 1
    assert all(torch.equal(s, x) for s in seen["plain"])
    # BN's batch statistics do not depend on the order: with the keys put back in place, everything agrees.
    torch.testing.assert_close(out.contrast_logits, out_plain.contrast_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.queues, plain.queues, atol=1e-5, rtol=0)


def test_key_branch_gets_no_gradient_and_the_key_projector_never_changes():
    model = tiny()
    loss_fn = dbm_ncl()
    groups = param_groups(model, 2e-4, True)
    trainable = {id(p) for g in groups for p in g["params"]}
    keys = [*model.key_bodies.parameters(), *model.key_projectors.parameters()]
    assert all(not p.requires_grad and id(p) not in trainable for p in keys)
    assert trainable == {id(p) for p in model.parameters() if p.requires_grad}
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    projector0 = copy.deepcopy(model.key_projectors.state_dict())
    body0 = copy.deepcopy(model.bodies.state_dict())
    for step in range(3):
        images, labels = batch(seed=step)
        optimizer.zero_grad()
        loss_fn(model(images), labels).backward()
        assert all(p.grad is None for p in keys)
        optimizer.step()
    for name, value in model.key_projectors.state_dict().items():
        assert torch.equal(value, projector0[name]), name
    assert not torch.equal(model.bodies[0].conv1.weight, body0["0.conv1.weight"])


def test_state_dict_round_trip_restores_queue_pointer_and_key_bodies():
    model = tiny(seed=0)
    for step in range(3):
        model(batch(seed=step)[0])
    state = model.state_dict()
    assert {"queues", "queue_ptr", "key_bodies.2.conv1.weight", "key_bodies.0.bn1.running_mean"} <= set(state)
    assert any(k.startswith("key_projectors.") for k in state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = tiny(seed=1)
    assert not torch.equal(restored.queues, model.queues)
    restored.load_state_dict(torch.load(buffer))
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    images, _ = batch(seed=9)
    torch.manual_seed(5)
    a = model(images)
    torch.manual_seed(5)
    b = restored(images)
    torch.testing.assert_close(a.contrast_logits, b.contrast_logits)
    assert (
        torch.equal(model.queues, restored.queues)
        and model.queue_ptr.item() == restored.queue_ptr.item() == 0
    )


def test_errors_batch_must_stack_two_views():
    """(That the global batch divides the queue is `check_model`'s, below: checked once, before any data.)"""
    model = tiny()
    with pytest.raises(ValueError, match="2 views"):
        model(torch.zeros(7, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown classifier head"):
        tiny(head="mlp")


def test_check_model_refuses_a_non_cifar_arch_and_a_queue_the_batch_does_not_divide():
    """Before any data is read (launch.build): ConfigErrors naming the keys at fault."""
    ncl = loss_class("dbm_ncl")
    check_model(ModelConfig(arch="resnet32"), ncl, batch_size=64, world_size=1)
    check_model(ModelConfig(arch="resnet_tiny", ncl_queue=128), ncl, batch_size=64, world_size=2)  # 32 each
    with pytest.raises(ConfigError, match=r"loss.name='dbm_ncl'.*model.arch='resnet50'"):
        check_model(ModelConfig(arch="resnet50"), ncl, batch_size=64, world_size=1)
    with pytest.raises(ConfigError, match=r"model.ncl_queue=1000 .*data.batch_size=64 \(the global batch"):
        check_model(ModelConfig(arch="resnet32", ncl_queue=1000), ncl, batch_size=64, world_size=1)
    # Every process enqueues the whole batch's keys: the global batch, not the per-process one, must divide.
    with pytest.raises(ConfigError, match=r"model.ncl_queue=192 .*data.batch_size=128 .*over 2 process"):
        check_model(ModelConfig(arch="resnet32", ncl_queue=192), ncl, batch_size=128, world_size=2)
    # A classifier's loss has nothing more to check, whatever the NCL keys say.
    check_model(
        ModelConfig(arch="resnet50", ncl_queue=1000), loss_class("dbm_ce"), batch_size=64, world_size=1
    )


def test_heads_and_builder():
    model = tiny()
    w = model.classifiers[0].weight  # [d, C]: FCNorm's renorm makes each feature row unit norm
    assert isinstance(model.classifiers[0], CosineClassifier)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(16))
    assert not torch.allclose(w.norm(dim=0), torch.ones(C))
    linear = tiny(head="linear")
    assert isinstance(linear.classifiers[0], torch.nn.Linear) and linear.classifiers[0].bias is not None
    # build_model dispatches on the loss's model kind: 3 x ResNet-32 (model.arch) with the loss's head.
    counts = [5] * 100
    where = dict(num_classes=100, class_counts=counts, mean=MEAN, std=STD)
    built = build_model(ModelConfig(arch="resnet32"), build_loss("dbm_ncl", counts), **where)
    assert isinstance(built, NCLModel) and isinstance(built.classifiers[0], CosineClassifier)
    assert built.feature_dim == 64 and built.queues.shape == (3, 1024, 64)
    assert built.bodies[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert built.ema_updates == 3  # once per expert, as the release's loop
    # 3 experts x (ResNet-32 body 0.464 M - its 650-weight FC + cosine head 6,400 + projector 8,320) trainable
    trainable = sum(p.numel() for p in built.parameters() if p.requires_grad)
    assert trainable == 3 * (464_154 - 650 + 6_400 + 8_320)
    # The [model] keys size it; ncl_linear gets linear heads.
    cfg = ModelConfig(
        arch="resnet_tiny", ncl_experts=2, ncl_moco_dim=8, ncl_queue=32, ncl_ema=0.9, ncl_ema_updates=1
    )
    small = build_model(cfg, build_loss("ncl_linear", counts), **where)
    assert small.num_experts == 2 and small.queues.shape == (2, 32, 8) and small.feature_dim == 32
    assert (small.ema_momentum, small.ema_updates) == (0.9, 1)
    assert isinstance(small.classifiers[1], torch.nn.Linear)
    assert small.bodies[0].conv1.weight.data_ptr() != small.key_bodies[0].conv1.weight.data_ptr()
    assert not torch.equal(small.bodies[0].conv1.weight, small.key_bodies[0].conv1.weight)  # own init


def test_bf16_autocast_keeps_heads_queue_and_outputs_in_float32():
    model = tiny()
    images, labels = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
    assert all(t.dtype == torch.float32 for t in out) and model.queues.dtype == torch.float32
    dbm_ncl()(out, labels).backward()


def _train(model, steps, loss_fn, forward=None):
    forward = model if forward is None else forward
    optimizer = torch.optim.SGD(param_groups(model, 2e-4, True), lr=0.05, momentum=0.9)
    losses = []
    for step in range(steps):
        images, labels = batch(seed=step)
        optimizer.zero_grad()
        loss = loss_fn(forward(images), labels)
        loss.backward()
        losses.append(loss.detach())
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        optimizer.step()
    return torch.stack(losses), grads


def test_compiled_forward_backward_equals_eager():
    torch._dynamo.reset()
    counters.clear()
    eager = tiny(seed=2)
    compiled = copy.deepcopy(eager)
    loss_fn = dbm_ncl()
    forward = torch.compile(compiled, backend="aot_eager", fullgraph=True, dynamic=False)
    want, want_grads = _train(eager, 3, loss_fn)
    got, got_grads = _train(compiled, 3, loss_fn, forward)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    for (name, g), w in zip(compiled.state_dict().items(), eager.state_dict().values(), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5, msg=name)
    assert compiled.queue_ptr.item() == eager.queue_ptr.item() == (3 * N) % Q
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


class _QueueReader(torch.nn.Module):
    """The model's hazard in miniature: a gradient through a buffer that the forward then overwrites."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.register_buffer("queue", torch.randn(1, 6, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.bmm(self.linear(x).unsqueeze(0), saved_copy(self.queue).transpose(1, 2))
        with torch.no_grad():
            self.queue.mul_(10).add_(1)
        return out


def test_saved_copy_keeps_the_pre_write_queue_for_the_backward_under_inductor():
    # With `self.queue.clone()` in place of saved_copy, Inductor's compiled gradient is wrong here
    # (PyTorch 2.14.1: the partitioner recomputes the clone in the backward, after the write).
    grads = []
    for compiled in (False, True):
        torch._dynamo.reset()
        torch.manual_seed(0)
        module = _QueueReader()
        before = module.queue.clone()
        fn = torch.compile(module, backend="inductor", fullgraph=True, dynamic=False) if compiled else module
        fn(torch.randn(3, 4)).square().sum().backward()
        grads.append(module.linear.weight.grad)
        torch.testing.assert_close(module.queue, before * 10 + 1)  # the write did happen
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_inductor_forward_backward_equals_eager():
    """The whole model and loss through Inductor (minutes on a small CPU): gradients, queue, EMA."""
    torch._dynamo.reset()
    eager = tiny(seed=2)
    compiled = copy.deepcopy(eager)
    compiled.compile(backend="inductor", dynamic=False)
    loss_fn = dbm_ncl()
    want, want_grads = _train(eager, 3, loss_fn)
    got, got_grads = _train(compiled, 3, torch.compile(loss_fn, backend="inductor", dynamic=False), compiled)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-4)
    for (name, g), w in zip(compiled.state_dict().items(), eager.state_dict().values(), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.gpu
def test_cuda_graph_capture_replays_the_stateful_forward():
    """The whole training forward + loss + backward captured once and replayed: the EMA, the enqueue and the
    pointer advance on every replay, equal to eager steps (the CPU twin is the compiled test above)."""
    device = torch.device("cuda")
    eager = tiny(seed=4).to(device)
    captured = copy.deepcopy(eager)
    loss_fn = dbm_ncl().to(device)
    images, labels = (t.to(device) for t in batch())
    static = images.clone()

    def step(model, x):
        loss = loss_fn(model(x), labels)
        loss.backward()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step(captured, static)
            step(eager, images)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_loss = step(captured, static)
    for _ in range(3):
        graph.replay()
        want = step(eager, images)
        torch.testing.assert_close(out_loss, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(captured.queues, eager.queues, atol=1e-4, rtol=0)
    assert captured.queue_ptr.item() == eager.queue_ptr.item() == (5 * N) % Q
    for a, b in zip(captured.key_bodies.parameters(), eager.key_bodies.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# --- Under DDP: two gloo processes, each training on half of a batch, enqueue every rank's keys in rank
# order, so both hold the one queue one process would, eager and compiled; DDP's broadcast leaves them out.

WORLD = 2
MODES = ("eager", "compile")


def rank_images(rank: int) -> torch.Tensor:
    """This rank's share of a fixed global batch: its classification rows, then its key rows."""
    images = batch(seed=1)[0]
    n = N // WORLD
    rows = slice(rank * n, (rank + 1) * n)
    return torch.cat([images[:N][rows], images[N:][rows]])


def own_keys(model: NCLModel, images: torch.Tensor) -> torch.Tensor:
    """This rank's keys [K, n, e] through a copy of its key branch (train-mode BN over this rank's rows)."""
    ref = copy.deepcopy(model).train()
    x = ref.normalize(images[images.shape[0] // 2 :])
    with torch.no_grad():
        pairs = zip(ref.key_bodies, ref.key_projectors, strict=True)
        return torch.stack([F.normalize(p(b(x)), dim=1) for b, p in pairs])


def _worker(rank: int, world: int) -> dict:
    results = {}
    for mode in MODES:
        model = tiny().train()  # the same initialisation on every rank, as DDP's first broadcast makes it
        before = model.queues.clone()
        images = rank_images(rank)
        keys = own_keys(model, images)
        step = torch.compile(model, backend="aot_eager") if mode == "compile" else model
        step(images)
        results[mode] = (before, keys, model.queues.clone(), int(model.queue_ptr))
    return results


@pytest.fixture(scope="module")
def rank_results():
    return run_ranks(_worker, WORLD)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_every_rank_enqueues_every_ranks_keys_in_rank_order(rank_results, mode):
    (before, keys0, queues0, ptr0), (_, keys1, queues1, ptr1) = (r[mode] for r in rank_results)
    assert torch.equal(queues0, queues1)  # one queue on both ranks, with no broadcast needed
    assert ptr0 == ptr1 == N  # advanced by the global batch
    n = N // WORLD
    torch.testing.assert_close(queues0[:, :n], keys0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(queues0[:, n:N], keys1, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(keys0, keys1, atol=1e-3)  # the ranks' keys differ: the check has teeth
    assert torch.equal(queues0[:, N:], before[:, N:])  # the rest of the queue is untouched


def test_the_queues_are_left_out_of_ddps_broadcast():
    assert rank_identical_buffers(tiny()) == ["queues", "queue_ptr"]
