"""The tensor-lr SGD (same maths as torch's), its parameter groups, and the schedules at their ends."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torch import nn

from losses import CosineClassifier
from trainer.config import OptimConfig
from trainer.optim import NORM_TYPES, SGD, build_optimizer, param_groups
from trainer.schedule import SCHEDULES, lr_at


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 3)
        self.cos = CosineClassifier(4, 3)

    def forward(self, x):
        f = self.ln(self.frozen(self.bn(self.conv(x)).mean((2, 3))))
        return self.fc(f).sum() + self.cos(f).sum()


def _by_id(groups):
    return [{id(p) for p in g["params"]} for g in groups]


def test_param_groups_by_module_type():
    net = Net()
    decay, no_decay = _by_id(param_groups(net, 5e-4, decay_norm_and_bias=False))
    assert decay == {id(net.conv.weight), id(net.fc.weight), id(net.cos.weight)}
    assert no_decay == {
        id(p) for p in (net.conv.bias, net.bn.weight, net.bn.bias, net.ln.weight, net.ln.bias, net.fc.bias)
    }
    frozen = {id(p) for p in net.frozen.parameters()}
    assert not frozen & (decay | no_decay)
    (everything,) = _by_id(param_groups(net, 5e-4, decay_norm_and_bias=True))
    assert everything == decay | no_decay


def test_param_groups_catch_downsample_norms():
    # torchvision's `downsample.1` BatchNorms have no "bn" in their names: chosen by type, they are exempt.
    net = torchvision.models.resnet18(weights=None)
    groups = param_groups(net, 1e-4, decay_norm_and_bias=False)
    assert groups[0]["weight_decay"] == 1e-4 and groups[1]["weight_decay"] == 0.0
    names = {id(p): n for n, p in net.named_parameters()}
    exempt = {names[id(p)] for p in groups[1]["params"]}
    assert "layer2.0.downsample.1.weight" in exempt and "fc.bias" in exempt
    owners = {id(p): m for m in net.modules() for p in m.parameters(recurse=False)}
    assert all(
        isinstance(owners[id(p)], NORM_TYPES) or names[id(p)].endswith("bias") for p in groups[1]["params"]
    )
    assert all(p.dim() > 1 for p in groups[0]["params"])


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("decay_norm_and_bias", [True, False])
def test_sgd_matches_torch(nesterov, decay_norm_and_bias):
    torch.manual_seed(0)
    net = Net()
    ref = copy.deepcopy(net)
    cfg = OptimConfig(
        lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=1e-2, decay_norm_and_bias=decay_norm_and_bias
    )
    ours = build_optimizer(net, cfg)
    theirs = torch.optim.SGD(
        param_groups(ref, cfg.weight_decay, decay_norm_and_bias),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=nesterov,
        foreach=False,
    )
    for i, lr in enumerate([0.1, 0.05, 0.2, 0.01]):
        x = torch.randn(2, 3, 6, 6)
        ours.lr.fill_(lr)
        for g in theirs.param_groups:
            g["lr"] = lr
        for model, opt in ((net, ours), (ref, theirs)):
            opt.zero_grad(set_to_none=i % 2 == 0)
            model(x).backward()
            opt.step()
    for a, b in zip(net.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_loading_state_keeps_every_tensor():
    """A captured step reads the lr tensor and the momentum buffers it was built with: loading a checkpoint
    copies the saved values into them instead of replacing them."""
    net = Net()
    opt = build_optimizer(net, OptimConfig(lr=0.3))
    lr = opt.lr
    assert lr.dim() == 0 and lr.item() == pytest.approx(0.3)
    assert all(g["lr"] is lr for g in opt.param_groups)
    net(torch.randn(2, 3, 6, 6)).backward()
    opt.step()
    state = copy.deepcopy(opt.state_dict())
    assert all("momentum_buffer" in s for s in state["state"].values())
    other = build_optimizer(net, OptimConfig(lr=0.7))
    other_lr = other.lr
    buffers = {p: other.state[p]["momentum_buffer"] for p in net.parameters() if p.requires_grad}
    other.load_state_dict(state)
    assert other.lr is other_lr and all(g["lr"] is other_lr for g in other.param_groups)
    assert other_lr.item() == pytest.approx(0.3)
    for p, buf in buffers.items():
        assert other.state[p]["momentum_buffer"] is buf
        torch.testing.assert_close(buf, opt.state[p]["momentum_buffer"])


def test_sgd_rejects_a_float_lr():
    with pytest.raises(TypeError, match="0-dim tensor"):
        SGD(Net().parameters(), lr=0.1)


# --- schedules ---

CIFAR_COS = OptimConfig(lr=0.1, schedule="cosine", warmup_epochs=5)
LDAM_STEP = OptimConfig(lr=0.1, schedule="step", warmup_epochs=5, milestones=(160, 180), gamma=0.01)


def _lr(cfg: OptimConfig, epoch: int, epochs: int) -> float:
    return lr_at(cfg, epoch, 0, 100, epochs)


def test_cosine_dbm_cifar():
    assert _lr(CIFAR_COS, 0, 200) == pytest.approx(0.02)  # e' = 1: lr / 5
    assert _lr(CIFAR_COS, 4, 200) == pytest.approx(0.1)  # e' = 5: end of warm-up
    for e1 in (6, 100, 150, 200):  # lr·½(1+cos(π(e'−4)/195))
        assert _lr(CIFAR_COS, e1 - 1, 200) == pytest.approx(0.05 * (1 + math.cos(math.pi * (e1 - 4) / 195)))
    assert _lr(CIFAR_COS, 198, 200) == pytest.approx(0.0, abs=1e-12)  # e' = 199: exactly 0
    assert 0 < _lr(CIFAR_COS, 199, 200) < 1e-5  # e' = 200: ~6.5e-6
    # constant within an epoch, whatever the step
    assert lr_at(CIFAR_COS, 50, 0, 100, 200) == lr_at(CIFAR_COS, 50, 99, 100, 200)


def test_step_schedules():
    assert [_lr(LDAM_STEP, e, 200) for e in range(5)] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert _lr(LDAM_STEP, 159, 200) == pytest.approx(0.1)  # e' = 160
    assert _lr(LDAM_STEP, 160, 200) == pytest.approx(1e-3)  # e' = 161 > 160
    assert _lr(LDAM_STEP, 180, 200) == pytest.approx(1e-5)  # e' > 180: lr * 1e-4
    assert _lr(LDAM_STEP, 199, 200) == pytest.approx(1e-5)
    fbl_large = OptimConfig(lr=0.2, schedule="step", milestones=(120, 160), gamma=0.1)
    assert _lr(fbl_large, 119, 200) == pytest.approx(0.2)
    assert _lr(fbl_large, 120, 200) == pytest.approx(0.02)
    assert _lr(fbl_large, 160, 200) == pytest.approx(0.002)
    places = OptimConfig(lr=0.2, schedule="step", milestones=(60, 80), gamma=0.1)
    assert _lr(places, 59, 90) == pytest.approx(0.2)
    assert _lr(places, 60, 90) == pytest.approx(0.02)
    assert _lr(places, 89, 90) == pytest.approx(0.002)


def released_gml_lr(epoch: int, lr=0.1, warmup=5, schedule=(160, 180)) -> float:
    """GML/cifar_ce.py `adjust_learning_rate` (epoch 0-indexed), transcribed."""
    if epoch <= warmup:
        return lr / warmup * (epoch + 1)
    if epoch > schedule[1]:
        return lr * 0.01
    if epoch > schedule[0]:
        return lr * 0.1
    return lr


def test_step_gml_is_the_released_cifar_schedule():
    """The GML CIFAR quirk: warm-up through 0-indexed epoch 5, which runs at 1.2 lr; x0.1 after 0-indexed
    epoch 160 and again after 180 (1-indexed milestones 161, 181 in the recipe)."""
    cfg = OptimConfig(lr=0.1, schedule="step_gml", warmup_epochs=5, milestones=(161, 181), gamma=0.1)
    assert [_lr(cfg, e, 200) for e in range(7)] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.1])
    assert _lr(cfg, 160, 200) == pytest.approx(0.1)
    assert _lr(cfg, 161, 200) == pytest.approx(0.01)
    assert _lr(cfg, 180, 200) == pytest.approx(0.01)
    assert _lr(cfg, 181, 200) == pytest.approx(0.001)
    assert _lr(cfg, 199, 200) == pytest.approx(0.001)
    for e in range(200):
        assert _lr(cfg, e, 200) == pytest.approx(released_gml_lr(e)), e
    assert _lr(OptimConfig(lr=0.1, schedule="step_gml", warmup_epochs=0, milestones=(2,)), 0, 5) == 0.1


def test_cosine_shifted_dbm_large_scale():
    cfg = OptimConfig(lr=0.1, schedule="cosine_shifted", warmup_epochs=5)
    assert _lr(cfg, 0, 90) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * -4 / 86)))  # ≈ 0.995 lr
    assert 0.099 < _lr(cfg, 0, 90) < 0.1
    assert _lr(cfg, 4, 90) == pytest.approx(0.1)  # e = 4: the peak, no warm-up
    assert _lr(cfg, 89, 90) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 85 / 86)))
    assert _lr(cfg, 89, 90) / 0.1 == pytest.approx(3.3e-4, rel=0.05)


def test_schedule_registry():
    assert {"cosine", "step", "step_gml", "cosine_shifted", "constant"} <= set(SCHEDULES)
    with pytest.raises(ValueError, match="optim.schedule: unknown value 'linear'; valid: 'cosine', 'step'"):
        OptimConfig(schedule="linear")
