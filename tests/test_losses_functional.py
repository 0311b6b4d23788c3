"""The losses' pure functions against hand-worked values, gradcheck and |cos| = 1."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losses import (
    TargetLogits,
    class_margins,
    cross_entropy,
    dbm_logits,
    drw_weights,
    fbl_curriculum,
    fbl_logits,
    fbl_strengths,
    ldam_margins,
    log_prior,
)

CIFAR100_IF100 = [math.floor(500 * 100 ** (-i / 99)) for i in range(100)]


def test_cifar100_lt_counts_fixture():
    assert sum(CIFAR100_IF100) == 10847
    assert CIFAR100_IF100[:3] == [500, 477, 455] and CIFAR100_IF100[-3:] == [5, 5, 5]


def test_class_margins_cifar():
    m = class_margins(CIFAR100_IF100, max_margin=0.1, tau=1.0)
    assert m.dtype == torch.float32 and m.shape == (100,)
    assert m[0].item() == pytest.approx(0.001) and m[99].item() == pytest.approx(0.1)
    torch.testing.assert_close(m, 0.5 / torch.tensor(CIFAR100_IF100, dtype=torch.float32))


def test_class_margins_unsorted_labels_min_vs_last():
    counts = [5, 50, 2, 500]  # the rarest class is not the last label
    m = class_margins(counts, max_margin=0.1)
    assert m.max().item() == pytest.approx(0.1) and m.argmax().item() == 2
    torch.testing.assert_close(m, torch.tensor([0.04, 0.004, 0.1, 0.0004]))
    last = class_margins(counts, max_margin=0.1, margin_norm="last")  # the released code: n_ref = n[-1]
    torch.testing.assert_close(last, torch.tensor([10.0, 1.0, 25.0, 0.1]))
    torch.testing.assert_close(class_margins(counts, 0.2, tau=0.5), 0.2 * (2 / torch.tensor(counts)) ** 0.5)
    with pytest.raises(ValueError, match="margin_norm must be one of min, last"):
        class_margins(counts, margin_norm="first")


def test_dbm_logits_hand_worked():
    cos = torch.tensor([[0.5, 0.7, -0.3], [0.5, 0.2, -0.3]])  # row 0: argmax 1 != 0, hard; row 1: easy
    target = torch.tensor([0, 0])
    margins = torch.tensor([0.1, 0.05, 0.02])
    for nan_guard in (True, False):
        z = dbm_logits(cos, target, margins, scale=32.0, nan_guard=nan_guard)
        assert z[0, 0].item() == pytest.approx(12.4201, abs=1e-4)
        assert z[1, 0].item() == pytest.approx(13.1534, abs=1e-4)
        torch.testing.assert_close(z[:, 1:], 32 * cos[:, 1:])  # off-target columns: s * cos, no margin
    # lambda_inst scales the instance term: M = 0.1 * (1 + 2 * 0.25) = 0.15 for the hard row.
    z = dbm_logits(cos, target, margins, scale=32.0, lambda_inst=2.0)
    assert z[0, 0].item() == pytest.approx(32 * math.cos(math.acos(0.5) + 0.15), abs=1e-4)
    assert z[1, 0].item() == pytest.approx(13.1534, abs=1e-4)


def test_dbm_hard_flag_uses_raw_cosine_argmax_first_index_on_ties():
    cos = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    margins = torch.tensor([0.1, 0.1])
    z = dbm_logits(cos, torch.tensor([0, 1]), margins, scale=1.0)
    easy, hard = math.cos(math.acos(0.5) + 0.1), math.cos(math.acos(0.5) + 0.125)
    assert z[0, 0].item() == pytest.approx(easy, abs=1e-6)  # argmax = 0 = target
    assert z[1, 1].item() == pytest.approx(hard, abs=1e-6)  # argmax = 0 (first maximum) != 1


def _random_cosines(n, c, generator, dtype=torch.float64):
    return (torch.rand(n, c, generator=generator, dtype=dtype) * 1.8 - 0.9).requires_grad_()


def test_dbm_safe_path_equals_released_arccos_form():
    g = torch.Generator().manual_seed(0)
    cos = _random_cosines(64, 10, g)
    target = torch.randint(0, 10, (64,), generator=g)
    margins = class_margins(torch.randint(2, 500, (10,), generator=g), 0.3).double()
    for detach in (False, True):
        safe = dbm_logits(cos, target, margins, 32.0, detach_difficulty=detach)
        released = dbm_logits(cos, target, margins, 32.0, detach_difficulty=detach, nan_guard=False)
        torch.testing.assert_close(safe, released)
        g_safe, g_released = (torch.autograd.grad(z.square().sum(), cos)[0] for z in (safe, released))
        torch.testing.assert_close(g_safe, g_released)
    # The reference row by row, straight from the spec's formula.
    z = dbm_logits(cos, target, margins, 32.0)
    for i in range(8):
        y = int(target[i])
        c = cos[i].tolist()
        hard = max(range(10), key=lambda k: (c[k], -k)) != y
        m = margins[y].item() * (1 + hard * (1 - c[y]) / 2)
        assert z[i, y].item() == pytest.approx(32 * math.cos(math.acos(c[y]) + m), abs=1e-9)


def test_dbm_gradient_difficulty_in_graph_hard_flag_not():
    c, m, s = 0.3, 0.2, 32.0
    cos = torch.tensor([[c, 0.9, 0.1]], dtype=torch.float64, requires_grad=True)  # hard: argmax is column 1
    target, margins = torch.tensor([0]), torch.tensor([m, 0.1, 0.1], dtype=torch.float64)
    theta_m = math.acos(c) + m * (1 + (1 - c) / 2)
    dtheta = -1 / math.sqrt(1 - c * c)
    for detach, dmargin in ((False, -m / 2), (True, 0.0)):
        z = dbm_logits(cos, target, margins, s, detach_difficulty=detach)
        (grad,) = torch.autograd.grad(z.sum(), cos)
        assert grad[0, 0].item() == pytest.approx(-s * math.sin(theta_m) * (dtheta + dmargin), rel=1e-9)
        # The column that made the sample hard gets exactly s: nothing flows through the argmax flag.
        assert grad[0, 1:].tolist() == [s, s]


def test_dbm_gradcheck():
    # Not with detach_difficulty=True: a stop-gradient, so finite differences disagree with it by design.
    g = torch.Generator().manual_seed(1)
    cos = _random_cosines(6, 4, g)
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    margins = torch.tensor([0.1, 0.3, 0.05, 0.2], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: dbm_logits(x, target, margins, 8.0, 1.5), (cos,))


def test_dbm_finite_at_unit_cosine():
    one_ish = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)).item()  # rounding pushed a cosine past 1
    cos = torch.tensor(
        [
            [1.0, 0.2, -1.0],
            [-1.0, 1.0, 0.0],
            [0.3, -1.0, 1.0],
            [one_ish, 0.1, -one_ish],
            [-one_ish, 0.5, 0.0],
        ],
        requires_grad=True,
    )
    target = torch.tensor([0, 0, 2, 0, 0])
    margins = torch.tensor([0.1, 0.2, 0.3])
    for detach in (False, True):
        z = dbm_logits(cos, target, margins, 32.0, detach_difficulty=detach)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(z, target), cos)
        assert torch.isfinite(z).all() and torch.isfinite(grad).all()
    assert z[0, 0].item() == pytest.approx(32 * math.cos(0.1), abs=1e-3)  # cos = 1: θ = 0, z = s cos M
    assert z[1, 0].item() == pytest.approx(32 * math.cos(math.pi + 0.2), abs=1e-3)  # cos = -1, hard
    # The released form (nan_guard=False) is kept verbatim, NaN included.
    z = dbm_logits(cos, target, margins, 32.0, nan_guard=False)
    (grad,) = torch.autograd.grad(z.sum(), cos)
    assert not torch.isfinite(z).all() and not torch.isfinite(grad).all()


def test_dbm_half_precision_input_computes_in_float32():
    cos = torch.tensor([[0.5, 0.7]], dtype=torch.bfloat16)
    z = dbm_logits(cos, torch.tensor([0]), torch.tensor([0.1, 0.1]), 32.0)
    assert z.dtype == torch.float32 and z[0, 0].item() == pytest.approx(12.4201, abs=1e-4)


def test_dbm_logits_rejects_wrong_width():
    with pytest.raises(ValueError, match=r"C = len\(margins\) = 3"):
        dbm_logits(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), torch.zeros(3), 32.0)


def test_fbl_strengths():
    torch.testing.assert_close(fbl_strengths([500, 50, 5]), torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(fbl_strengths([5, 500, 50]), torch.tensor([1.0, 0.0, 0.5]))
    assert fbl_strengths([7, 7, 7]).tolist() == [0.0, 0.0, 0.0]  # balanced: nothing to adjust


def test_fbl_logits_worked_example_and_feature_gradient():
    logits = torch.zeros(1, 3)
    features = torch.tensor([[6.0, 8.0]], requires_grad=True)  # ||f|| = 10
    z = fbl_logits(logits, features, torch.tensor([0.0, 0.5, 1.0]), weight=60.0, curriculum=1.0)
    torch.testing.assert_close(z, torch.tensor([[0.0, -3.0, -6.0]]))
    (grad,) = torch.autograd.grad(z.sum(), features)  # not detached: d/df of -90 / ||f|| = 90 f / ||f||^3
    torch.testing.assert_close(grad, 90.0 * features.detach() / 1000.0)
    half = fbl_logits(logits, features, torch.tensor([0.0, 0.5, 1.0]), 60.0, torch.tensor(0.5))
    torch.testing.assert_close(half, torch.tensor([[0.0, -1.5, -3.0]]))
    g = torch.Generator().manual_seed(2)
    inputs = (
        torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True),
        torch.randn(4, 5, dtype=torch.float64, generator=g, requires_grad=True),
    )
    strengths = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z, f: fbl_logits(z, f, strengths, 60.0, 0.7), inputs)


def test_fbl_curriculum():
    assert fbl_curriculum(0, 200) == 0.0
    assert fbl_curriculum(190, 200) == 1.0
    assert fbl_curriculum(199, 200) == pytest.approx(1.097, abs=1e-3)  # > 1 in the last 9 epochs, as released
    for epoch, value in ((50, 0.069), (100, 0.277), (150, 0.623)):
        assert fbl_curriculum(epoch, 200) == pytest.approx(value, abs=1e-3)
    assert fbl_curriculum(4, 5) == 1.0 and fbl_curriculum(0, 1) == 0.0  # short runs: 1 at the last epoch
    with pytest.raises(ValueError):
        fbl_curriculum(-1, 200)


def test_drw_weights():
    torch.testing.assert_close(drw_weights([500, 5]), torch.tensor([0.0203, 1.9797]), atol=1e-4, rtol=0)
    w = drw_weights(CIFAR100_IF100)
    assert w.sum().item() == pytest.approx(100.0, rel=1e-5)
    assert w[0].item() == pytest.approx(0.0449, abs=1e-4) and w[-1].item() == pytest.approx(4.378, abs=1e-3)
    assert drw_weights([500, 5], beta=0.0).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="drw_beta"):
        drw_weights([500, 5], beta=1.0)


def test_prior_and_ldam_margins():
    torch.testing.assert_close(log_prior([300, 100]), torch.tensor([0.75, 0.25]).log())
    m = ldam_margins([10000, 16, 1], max_margin=0.5)
    torch.testing.assert_close(m, torch.tensor([0.05, 0.25, 0.5]))


def test_class_counts_validated():
    with pytest.raises(ValueError, match="class 1 has 0 images"):
        class_margins([5, 0, 3])
    with pytest.raises(ValueError, match="1-D"):
        fbl_strengths([[1, 2]])
    with pytest.raises(ValueError, match="whole numbers"):
        drw_weights([1.5, 2.0])
    torch.testing.assert_close(class_margins(torch.tensor([500, 5])), class_margins([500, 5]))


def test_target_logits_cross_entropy_equals_dense():
    g = torch.Generator().manual_seed(3)
    others = (torch.randn(16, 7, generator=g, dtype=torch.float64) * 20).requires_grad_()
    z_y = (torch.randn(16, generator=g, dtype=torch.float64) * 20).requires_grad_()
    target = torch.randint(0, 7, (16,), generator=g)
    prior = log_prior([50, 30, 20, 9, 5, 3, 2]).double()
    weight = drw_weights([50, 30, 20, 9, 5, 3, 2]).double()
    logits = TargetLogits(others, z_y)
    for kwargs in ({}, {"prior": prior}, {"weight": weight}, {"prior": prior, "weight": weight}):
        fused = cross_entropy(logits, target, **kwargs)
        dense = cross_entropy(logits.dense(target), target, **kwargs)
        torch.testing.assert_close(fused, dense)
        torch.testing.assert_close(
            torch.autograd.grad(fused, (others, z_y)), torch.autograd.grad(dense, (others, z_y))
        )
    reference = F.cross_entropy(logits.dense(target) + prior, target, weight=weight)
    torch.testing.assert_close(cross_entropy(logits, target, prior, weight), reference)
    # Far-apart logits (as with a large scale) neither overflow nor underflow.
    extreme = TargetLogits(torch.tensor([[500.0, -500.0, 0.0]]), torch.tensor([-900.0]))
    value = cross_entropy(extreme, torch.tensor([1]))
    assert value.item() == pytest.approx(1400.0)
    assert torch.autograd.gradcheck(
        lambda o, t: cross_entropy(TargetLogits(o, t), target, prior), (others, z_y)
    )
