"""The training / eval steps: eager equals a hand-written loop, compiled equals eager without recompiling when
the lr or the loss's epoch state changes, graph mode falls back on a CPU; on a GPU, the captured step equals
eager, stays valid across a checkpoint load and never syncs with the host."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from losses import build_loss
from tests.helpers import free_port
from trainer.config import ModelConfig, OptimConfig, StepConfig
from trainer.models import build_model
from trainer.optim import build_optimizer, param_groups
from trainer.step import CompiledRunner, EvalStep, GraphRunner, TrainStep, autocast_dtype

COUNTS = (60, 40, 20, 12, 6)
C = len(COUNTS)
# (lr, epoch) per step: the lr changes every step, DRW switches on at epoch index 160.
SCHEDULE = [(0.05, 0), (0.1, 10), (0.1, 160), (0.02, 170)]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _batches(n: int, batch: int = 8, size: int = 16, device: str = "cpu", views: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randint(0, 256, (views * batch, 3, size, size), dtype=torch.uint8, generator=g)
        y = torch.randint(0, C, (batch,), generator=g)
        out.append((x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)))
    return out


def _parts(loss_name: str = "dbm_drw", arch: str = "resnet_tiny", device: str = "cpu", seed: int = 0):
    torch.manual_seed(seed)
    loss = build_loss(loss_name, COUNTS).to(device)
    model = build_model(
        ModelConfig(arch=arch), loss, num_classes=C, class_counts=COUNTS, mean=(0.5,) * 3, std=(0.25,) * 3
    ).to(device)
    return model, loss


def _train(model, loss, cfg: StepConfig, batches, device="cpu", recompile_check=False):
    optimizer = build_optimizer(model, OptimConfig(weight_decay=5e-4, decay_norm_and_bias=False))
    step = TrainStep(model, loss, optimizer, cfg)
    reads = []
    for i, ((x, y), (lr, epoch)) in enumerate(zip(batches, SCHEDULE, strict=True)):
        step.set_lr(lr)
        loss.set_epoch(epoch, 200)
        with torch._dynamo.config.patch(error_on_recompile=recompile_check and i > 0):
            step(x, y)
        reads.append(step.read_metrics(per_class=True))
    return step, optimizer, reads


def _assert_same_params(a, b, **tol):
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if p.is_floating_point():
            torch.testing.assert_close(p, q, msg=lambda m, name=name: f"{name}: {m}", **tol)


def test_eager_step_equals_a_plain_loop():
    model, loss = _parts()
    reference = copy.deepcopy(model)
    ref_loss = copy.deepcopy(loss)
    batches = _batches(len(SCHEDULE))
    _, _, reads = _train(model, loss, StepConfig(mode="eager"), batches)
    ref_opt = torch.optim.SGD(param_groups(reference, 5e-4, decay_norm_and_bias=False), lr=0.0, momentum=0.9)
    losses = []
    for (x, y), (lr, epoch) in zip(batches, SCHEDULE, strict=True):
        ref_loss.set_epoch(epoch, 200)
        for g in ref_opt.param_groups:
            g["lr"] = lr
        ref_opt.zero_grad()
        value = ref_loss(reference(x), y)
        value.backward()
        ref_opt.step()
        losses.append(value.item())
    _assert_same_params(model, reference, rtol=1e-5, atol=1e-6)
    assert [r["loss"] for r in reads] == pytest.approx(losses, rel=1e-5)
    for (_, y), r in zip(batches, reads, strict=True):
        assert r["samples"] == 8 and r["steps"] == 1
        assert r["class_counts"] == torch.bincount(y, minlength=C).tolist()
        assert 0 <= r["top1"] <= 1
    assert reads[2]["loss"] != reads[1]["loss"]


def test_read_metrics_resets_and_averages():
    model, loss = _parts("ce")
    optimizer = build_optimizer(model, OptimConfig())
    step = TrainStep(model, loss, optimizer, StepConfig(mode="eager"))
    for x, y in _batches(3):
        step(x, y)
    r = step.read_metrics()
    assert r["steps"] == 3 and r["samples"] == 24 and r["loss"] > 0 and "class_counts" not in r
    assert step.read_metrics() == {"loss": None, "samples": 0, "steps": 0, "top1": None}


def _compiled_equals_eager(cfg: StepConfig, loss_name: str = "dbm_drw"):
    model, loss = _parts(loss_name)
    eager_model, eager_loss = copy.deepcopy(model), copy.deepcopy(loss)
    batches = _batches(len(SCHEDULE), views=loss.num_views)
    torch.manual_seed(1)  # both runs draw the same random numbers (NCL's shuffle-BN permutations)
    step, _, reads = _train(model, loss, cfg, batches, recompile_check=True)
    assert isinstance(step.runner, CompiledRunner)
    torch.manual_seed(1)
    _, _, eager_reads = _train(eager_model, eager_loss, StepConfig(mode="eager"), batches)
    _assert_same_params(model, eager_model, rtol=1e-4, atol=1e-5)
    for r, e in zip(reads, eager_reads, strict=True):
        assert r["loss"] == pytest.approx(e["loss"], rel=1e-4)
        assert r["class_counts"] == e["class_counts"] and r["top1"] == e["top1"]
    # eval: full batches then a partial last one (its own static-shape graph), same counts as eager
    evaluator = EvalStep(model, cfg, COUNTS)
    eager_eval = EvalStep(eager_model, StepConfig(mode="eager"), COUNTS)
    for x, y in _batches(2, seed=1) + [(x[:3], y[:3]) for x, y in _batches(1, seed=2)]:
        evaluator(x, y)
        eager_eval(x, y)
    got, want = evaluator.read_metrics(), eager_eval.read_metrics()
    assert got["samples"] == 19 and got["per_class"] == pytest.approx(want["per_class"])
    assert not model.training
    # back to training: the step switches the mode back without recompiling the train graph
    x, y = batches[0]
    with torch._dynamo.config.patch(error_on_recompile=True):
        step(x, y)
    assert model.training


def test_traced_step_equals_eager_without_recompiles(one_thread):
    # Dynamo + AOTAutograd without code generation: the same graphs and guards as Inductor, in seconds.
    _compiled_equals_eager(StepConfig(mode="compile", compile_backend="aot_eager"))


def test_traced_ncl_step_equals_eager_without_recompiles(one_thread):
    """NCL's experts through the step: the in-forward enqueue and EMA compile into the step's graph (queues,
    pointer and key bodies are in the compared state) and its eval graph averages the experts."""
    _compiled_equals_eager(StepConfig(mode="compile", compile_backend="aot_eager"), "dbm_ncl")


def test_ncl_step_two_views():
    model, loss = _parts("dbm_ncl")
    optimizer = build_optimizer(model, OptimConfig())
    step = TrainStep(model, loss, optimizer, StepConfig(mode="eager"))
    key_body = model.key_bodies[0].conv1.weight.detach().clone()
    for x, y in _batches(3, views=2):
        step(x, y)
    r = step.read_metrics(per_class=True)
    assert r["samples"] == 24 and sum(r["class_counts"]) == 24  # view 0 only
    assert model.queue_ptr.item() == 24 and not torch.equal(key_body, model.key_bodies[0].conv1.weight)


@pytest.mark.slow
def test_inductor_step_equals_eager_without_recompiles():
    _compiled_equals_eager(StepConfig(mode="compile", compile_mode="default"))


def test_bcl_step_three_views():
    model, loss = _parts("dbm_bcl")
    optimizer = build_optimizer(model, OptimConfig())
    step = TrainStep(model, loss, optimizer, StepConfig(mode="eager"))
    before = model.head_fc[0].weight.detach().clone()
    for x, y in _batches(2, views=3):
        step(x, y)
    r = step.read_metrics(per_class=True)
    assert r["samples"] == 16 and sum(r["class_counts"]) == 16  # view 0 only
    assert not torch.equal(before, model.head_fc[0].weight)


def test_graph_mode_falls_back_to_compile_on_cpu(caplog):
    model, loss = _parts()
    optimizer = build_optimizer(model, OptimConfig())
    cfg = StepConfig(mode="graph")
    with caplog.at_level(logging.INFO, logger="trainer.step"):
        step = TrainStep(model, loss, optimizer, cfg)
        evaluator = EvalStep(model, cfg, COUNTS)
    assert step.mode == "compile" and evaluator.mode == "compile"
    assert isinstance(step.runner, CompiledRunner) and not isinstance(step.runner, GraphRunner)
    assert "falling back to compile" in caplog.text


def test_config_errors_and_precision():
    with pytest.raises(
        ValueError, match="step.mode: unknown value 'jit'; valid: 'eager', 'compile', 'graph'"
    ):
        StepConfig(mode="jit")
    with pytest.raises(
        ValueError, match="step.precision: unknown value 'fp16'; valid: 'auto', 'bf16', 'fp32'"
    ):
        StepConfig(precision="fp16")
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert autocast_dtype("fp32", torch.device("cuda")) is None


@pytest.mark.parametrize("mode", ["eager", "compile"])
def test_ddp_wrapped_model(mode):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        model, loss = _parts()
        reference, ref_loss = copy.deepcopy(model), copy.deepcopy(loss)
        ddp = DistributedDataParallel(model)
        batches = _batches(len(SCHEDULE))
        cfg = StepConfig(mode=mode, compile_backend="aot_eager")
        step, _, reads = _train(ddp, loss, cfg, batches)
        _train(reference, ref_loss, StepConfig(mode="eager"), batches)
        _assert_same_params(model, reference, rtol=1e-4, atol=1e-5)
        evaluator = EvalStep(ddp, cfg, COUNTS)
        assert evaluator.module is model  # eval never goes through DDP's forward
        x, y = batches[0]
        evaluator(x, y)
        assert evaluator.read_metrics()["samples"] == 8
        step(x, y)
        assert ddp.training and model.training
    finally:
        dist.destroy_process_group()


# --- GPU ---


def _gpu_run(mode: str, precision: str, batches, warmup: int = 2, state=None, loss_name="dbm_drw"):
    model, loss = _parts(loss_name, device="cuda")
    if state is not None:
        model.load_state_dict(state)
    cfg = StepConfig(mode=mode, precision=precision, compile_mode="default", graph_warmup=warmup)
    step, optimizer, reads = _train(model, loss, cfg, batches, device="cuda")
    return model, loss, step, optimizer, reads


@pytest.mark.gpu
@pytest.mark.parametrize("loss_name,views", [("dbm_drw", 1), ("dbm_ncl", 2)])
def test_graph_equals_eager_fp32(monkeypatch, loss_name, views):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    batches = _batches(len(SCHEDULE), batch=16, size=32, device="cuda", views=views)
    graph_model, _, step, _, reads = _gpu_run("graph", "fp32", batches, loss_name=loss_name)
    eager_model, _, _, _, eager_reads = _gpu_run("eager", "fp32", batches, loss_name=loss_name)
    assert isinstance(step.runner, GraphRunner)
    (captured,) = step.runner.graphs.values()
    assert captured.graph is not None  # 2 warm-up steps, then captured at step 3 and replayed at 4
    _assert_same_params(graph_model, eager_model, rtol=1e-3, atol=1e-4)
    for r, e in zip(reads, eager_reads, strict=True):
        assert r["loss"] == pytest.approx(e["loss"], rel=1e-3)
        assert r["class_counts"] == e["class_counts"]


@pytest.mark.gpu
def test_graph_stays_valid_after_loading_a_checkpoint(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    batches = _batches(len(SCHEDULE), batch=16, size=32, device="cuda")
    model, loss, step, optimizer, _ = _gpu_run("graph", "fp32", batches, warmup=1)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(optimizer.state_dict())
    for x, y in batches:  # move on, then go back to the saved state
        step(x, y)
    model.load_state_dict(saved_model)
    graph = next(iter(step.runner.graphs.values())).graph
    optimizer.load_state_dict(saved_opt)  # copied into the momentum buffers the graph captured
    more = _batches(3, batch=16, size=32, device="cuda", seed=5)
    for x, y in more:
        step(x, y)
    assert next(iter(step.runner.graphs.values())).graph is graph  # replayed, never re-captured
    reference, ref_loss = _parts(device="cuda")
    reference.load_state_dict(saved_model)
    ref_opt = build_optimizer(reference, OptimConfig(weight_decay=5e-4, decay_norm_and_bias=False))
    ref_opt.load_state_dict(saved_opt)
    ref_loss.set_epoch(SCHEDULE[-1][1], 200)
    ref_step = TrainStep(reference, ref_loss, ref_opt, StepConfig(mode="eager", precision="fp32"))
    for x, y in more:
        ref_step(x, y)
    _assert_same_params(model, reference, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("loss_name,views", [("dbm_drw", 1), ("dbm_ncl", 2)])
def test_graph_step_never_syncs_bf16(loss_name, views):
    batches = _batches(len(SCHEDULE), batch=16, size=32, device="cuda", views=views)
    model, loss, step, _, reads = _gpu_run("graph", "auto", batches, loss_name=loss_name)
    assert step.dtype is torch.bfloat16
    assert all(r["loss"] is not None and r["loss"] == r["loss"] for r in reads)  # finite, not NaN
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i, (x, y) in enumerate(batches):
            step.set_lr(0.01 * (i + 1))
            step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    r = step.read_metrics()
    assert r["steps"] == len(batches) and r["loss"] == r["loss"]


@pytest.mark.parametrize("loss_name", ["dbm_drw", "dbm_bcl"])
def test_prepare_leaves_the_run_unchanged(loss_name):
    """CPU twin of capture-before-loaders: compiling on a synthetic batch first, then restoring every tensor
    (parameters, BatchNorm statistics, momentum, metric accumulators, generators) trains the same model as a
    run without it."""
    views = 3 if loss_name == "dbm_bcl" else 1
    batches = _batches(len(SCHEDULE), views=views)
    cfg = StepConfig(mode="compile", compile_backend="aot_eager")
    model, loss = _parts(loss_name)
    reference, ref_loss = copy.deepcopy(model), copy.deepcopy(loss)
    optimizer = build_optimizer(model, OptimConfig(weight_decay=5e-4, decay_norm_and_bias=False))
    step = TrainStep(model, loss, optimizer, cfg)
    synthetic = torch.randint(0, 256, batches[0][0].shape, dtype=torch.uint8).contiguous(
        memory_format=torch.channels_last
    )
    before = [t.clone() for t in step.state_tensors()]
    step.prepare(synthetic, torch.arange(8) % C)
    assert all(torch.equal(a, b) for a, b in zip(before, step.state_tensors(), strict=True))
    assert step.read_metrics()["steps"] == 0  # the warm-up step's loss was not counted
    reads = []
    for (x, y), (lr, epoch) in zip(batches, SCHEDULE, strict=True):
        step.set_lr(lr)
        loss.set_epoch(epoch, 200)
        with torch._dynamo.config.patch(error_on_recompile=True):  # prepare compiled everything already
            step(x, y)
        reads.append(step.read_metrics(per_class=True))
    _, _, ref_reads = _train(reference, ref_loss, cfg, batches)
    _assert_same_params(model, reference, rtol=0, atol=0)
    assert reads == ref_reads


@pytest.mark.gpu
def test_graph_prepared_before_the_loaders_equals_eager(monkeypatch):
    """prepare() warms up and captures on a synthetic batch; the real batches only replay, and the model
    trains as the eager step does."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    batches = _batches(len(SCHEDULE), batch=16, size=32, device="cuda")
    model, loss = _parts(device="cuda")
    reference, ref_loss = copy.deepcopy(model), copy.deepcopy(loss)
    optimizer = build_optimizer(model, OptimConfig(weight_decay=5e-4, decay_norm_and_bias=False))
    step = TrainStep(
        model, loss, optimizer, StepConfig(mode="graph", precision="fp32", compile_mode="default")
    )
    synthetic = torch.randint(0, 256, batches[0][0].shape, dtype=torch.uint8, device="cuda")
    step.prepare(synthetic.contiguous(memory_format=torch.channels_last), torch.arange(16, device="cuda") % C)
    (captured,) = step.runner.graphs.values()
    assert captured.graph is not None  # captured before any real batch
    for (x, y), (lr, epoch) in zip(batches, SCHEDULE, strict=True):
        step.set_lr(lr)
        loss.set_epoch(epoch, 200)
        step(x, y)
    _train(reference, ref_loss, StepConfig(mode="eager", precision="fp32"), batches, device="cuda")
    _assert_same_params(model, reference, rtol=1e-3, atol=1e-4)
