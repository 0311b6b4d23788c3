"""GML and DBM-GML (losses/gml.py): the class-wise log-mean-exp over a class-balanced queue, the two contrast
terms and their gradient split, the supervised term (cosine BS / DBM-BS at s = 30), distillation at T = 4,
against hand-worked values and a transcription of the released GMLLoss; compiled == eager."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from losses import ModelOutput, build_loss, class_margins
from losses.gml import DBMGML, GML, class_log_mean_exp, distill_kl, gml_contrast
from losses.output import MoCoOutput

COUNTS = [40, 20, 10, 5]


def _softmax(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def test_class_log_mean_exp_hand_worked():
    # Queue of 5 keys: class 0 owns slots 0-1, class 1 slots 2-4.
    logits = torch.tensor([[0.5, -0.5, 1.0, 0.0, 0.2]], dtype=torch.float64)
    sizes = torch.tensor([2, 3])
    got = class_log_mean_exp(logits, sizes)
    want = [math.log(math.cosh(0.5)), math.log((math.e + 1 + math.exp(0.2)) / 3)]
    torch.testing.assert_close(got, torch.tensor([want], dtype=torch.float64))
    # Weights leave slot 2 out of class 1's mean (and the row max, 1.0, is still the shift: no effect).
    weights = torch.tensor([[True, True, False, True, True]])
    got = class_log_mean_exp(logits, sizes, weights)
    want[1] = math.log((1 + math.exp(0.2)) / 2)
    torch.testing.assert_close(got, torch.tensor([want], dtype=torch.float64))
    # Shifted by the row max: no overflow at 1000.
    torch.testing.assert_close(
        class_log_mean_exp(logits + 1000, sizes), class_log_mean_exp(logits, sizes) + 1000
    )


def test_contrast_hand_worked_values_and_gradient_split():
    # One query of class 0; keys [s0, s1 | s2] (class 0: two keys, class 1: one), the first key is the
    # query's own. Counts [3, 1]: p = [0.75, 0.25]. T = 0.5.
    s = [0.6, 0.2, -0.4]
    t = 0.5
    sims = torch.tensor([s], dtype=torch.float64, requires_grad=True)
    temp = torch.tensor(t, dtype=torch.float64, requires_grad=True)
    own = torch.tensor([[True, False, False]])
    prior = torch.tensor([0.75, 0.25], dtype=torch.float64).log()
    con, con_t = gml_contrast(sims, torch.tensor([2, 1]), own, temp, torch.tensor([0]), prior)

    lp = [math.log(0.75), math.log(0.25)]
    z = [math.log((math.exp(s[0] / t) + math.exp(s[1] / t)) / 2), s[2] / t]  # every key
    z_t = [s[1] / t, s[2] / t]  # own key left out
    p, p_t = (
        _softmax([a + b for a, b in zip(z, lp, strict=True)]),
        _softmax([a + b for a, b in zip(z_t, lp, strict=True)]),
    )
    assert con.item() == pytest.approx(-math.log(p[0]), abs=1e-12)
    assert con_t.item() == pytest.approx(-math.log(p_t[0]), abs=1e-12)

    # con trains the similarities only: dL/ds_j = (p_c(j) - y_c(j)) * a_j / T, a_j the within-class softmax.
    g_s, g_t = torch.autograd.grad(con, (sims, temp), allow_unused=True, materialize_grads=True)
    a0 = math.exp(s[0] / t) / (math.exp(s[0] / t) + math.exp(s[1] / t))
    want = [(p[0] - 1) * a0 / t, (p[0] - 1) * (1 - a0) / t, p[1] / t]
    torch.testing.assert_close(g_s, torch.tensor([want], dtype=torch.float64))
    assert g_t.item() == 0.0
    # con_T trains T only: dz_c/dT = -E_c[s] / T^2 over the class's kept keys.
    g_s, g_t = torch.autograd.grad(con_t, (sims, temp), allow_unused=True, materialize_grads=True)
    assert not g_s.any()
    want_t = (p_t[0] - 1) * (-s[1] / t**2) + p_t[1] * (-s[2] / t**2)
    assert g_t.item() == pytest.approx(want_t, abs=1e-12)


def released_gml(
    query, q_labels, q_idx, key, k_labels, k_idx, sup_logits, t_logits, log_t_c, cls_weight, a, b, g
):
    """GMLLoss.forward of quotation2520/dbm_ltr GML/losses.py, transcribed (one-hot class sums, T_s = 1/30
    as exp(log(1/30)), DistillKL(T=4))."""
    num_classes = cls_weight.numel()
    t_c, t_s = log_t_c.exp(), torch.full([1], 1 / 30, dtype=query.dtype).log().exp()

    def log_s(logits, weights, target):
        max_logit = logits.amax(1, keepdim=True).detach()
        logits = logits - max_logit
        one_hot = F.one_hot(target, num_classes).to(logits.dtype)
        mean = ((logits.exp() * weights) @ one_hot) / (weights @ one_hot)
        return mean.log() + max_logit

    q_dot_k = query @ key.T / t_c.detach()
    log_sxy = log_s(q_dot_k, torch.ones_like(q_dot_k), k_labels)
    q_dot_k_t = (query @ key.T).detach() / t_c
    log_sxy_t = log_s(q_dot_k_t, (q_idx[:, None] != k_idx[None, :]).to(query.dtype), k_labels)
    loss_sup = F.cross_entropy(sup_logits / t_s + cls_weight.log(), q_labels)
    loss_con = F.cross_entropy(log_sxy + cls_weight.log(), q_labels)
    loss_con_t = F.cross_entropy(log_sxy_t + cls_weight.log(), q_labels)
    p_s = F.log_softmax(sup_logits / t_s / 4, dim=1)
    p_t = F.softmax(t_logits / t_s / 4, dim=1)
    loss_div = F.kl_div(p_s, p_t, reduction="sum") * 16 / sup_logits.shape[0]
    return g * loss_sup + b * (loss_con + loss_con_t) + a * loss_div


def random_case(n=6, seed=0, dtype=torch.float64):
    """A queue of 11 keys grouped by class (sizes 4, 3, 2, 2); ids 0..10, queries 0..5 share the first."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([4, 3, 2, 2])
    k_labels = torch.repeat_interleave(torch.arange(4), sizes)
    query = F.normalize(torch.randn(n, 5, generator=g, dtype=dtype), dim=1).requires_grad_()
    key = F.normalize(torch.randn(11, 5, generator=g, dtype=dtype), dim=1).requires_grad_()
    q_idx, k_idx = torch.arange(n), torch.randperm(11, generator=g)
    cos = (torch.rand(n, 4, generator=g, dtype=dtype) * 1.8 - 0.9).requires_grad_()
    t_cos = torch.rand(n, 4, generator=g, dtype=dtype) * 1.8 - 0.9
    log_t = torch.tensor(math.log(0.07), dtype=dtype, requires_grad=True)
    target = torch.randint(0, 4, (n,), generator=g)
    return query, key, q_idx, k_idx, k_labels, sizes, cos, t_cos, log_t, target


def _ours(loss, query, key, q_idx, k_idx, sizes, cos, t_cos, log_t, target):
    own = q_idx[:, None] == k_idx[None, :]
    out = MoCoOutput(cos.new_zeros(cos.shape[0], 3), cos, query @ key.T, sizes, own, log_t.exp(), t_cos)
    return loss(out, target)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.0, 1.0, 1.0), (0.5, 2.0, 0.3)])
def test_gml_equals_released_gmlloss(weights):
    alpha, beta, gamma = weights
    query, key, q_idx, k_idx, k_labels, sizes, cos, t_cos, log_t, target = random_case()
    loss = build_loss("gml", COUNTS, gml_alpha=alpha, gml_beta=beta, gml_gamma=gamma)
    ours = _ours(loss, query, key, q_idx, k_idx, sizes, cos, t_cos, log_t, target)
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    ref = released_gml(
        query, target, q_idx, key, k_labels, k_idx, cos, t_cos, log_t, prior, alpha, beta, gamma
    )
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)  # the prior is float32 in ours
    inputs = (query, key, cos, log_t)
    for got, want in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(ref, inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_supervised_terms():
    cos = torch.tensor([[0.5, 0.3], [0.1, 0.7]], dtype=torch.float64)
    target = torch.tensor([1, 1])
    counts = [4, 1]
    out = MoCoOutput(
        torch.zeros(2, 3),
        cos,
        torch.zeros(2, 2),
        torch.tensor([1, 1]),
        torch.zeros(2, 2).bool(),
        torch.tensor(0.1),
    )
    only_sup = dict(gml_alpha=0.0, gml_beta=0.0)
    # gml: CE(30 cos + log p). Row 0 by hand: z = [15, 9] + log [0.8, 0.2].
    z0 = [15 + math.log(0.8), 9 + math.log(0.2)]
    z1 = [3 + math.log(0.8), 21 + math.log(0.2)]
    want = (-math.log(_softmax(z0)[1]) - math.log(_softmax(z1)[1])) / 2
    assert build_loss("gml", counts, **only_sup)(out, target).item() == pytest.approx(want, rel=1e-6)
    # dbm_gml: DBM-BS, s = 30, K = 0.1 (margins [0.025, 0.1]). Row 0 is hard (argmax 0 != 1), difficulty
    # (1 - 0.3) / 2: M = 0.1 * 1.35; row 1 is easy: M = 0.1.
    z0[1] = 30 * math.cos(math.acos(0.3) + 0.135) + math.log(0.2)
    z1[1] = 30 * math.cos(math.acos(0.7) + 0.1) + math.log(0.2)
    want = (-math.log(_softmax(z0)[1]) - math.log(_softmax(z1)[1])) / 2
    got = build_loss("dbm_gml", counts, **only_sup)(out, target)
    assert got.item() == pytest.approx(want, rel=1e-6)
    # ... which is the registered dbm_bs on the same cosines.
    assert got.item() == build_loss("dbm_bs", counts)(ModelOutput(torch.zeros(2, 3), cos), target).item()
    assert class_margins(counts, 0.1).tolist() == pytest.approx([0.025, 0.1])


def test_teacher_loss_cosine_bs_is_dbm_bs_without_margin():
    """The teachers' cosine Balanced Softmax at s = 30 (cifar_ce.py: CE(30 cos + log p)) is dbm_bs with
    max_margin 0: the margin vanishes from the value and from the gradient."""
    g = torch.Generator().manual_seed(1)
    cos = (torch.rand(16, 4, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    cos.data[0, 2] = 1.0  # |cos| = 1 stays finite
    target = torch.randint(0, 4, (16,), generator=g)
    target[0] = 2
    ours = build_loss("dbm_bs", COUNTS, max_margin=0.0, scale=30.0)(
        ModelOutput(cos.new_zeros(16, 2), cos), target
    )
    ref = F.cross_entropy(30 * cos + torch.tensor(COUNTS, dtype=torch.float64).div(sum(COUNTS)).log(), target)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-7)
    torch.testing.assert_close(torch.autograd.grad(ours, cos)[0], torch.autograd.grad(ref, cos)[0])


def test_distillation_hand_worked():
    # Student cos [0.2, -0.2], teacher [0.6, 0.0]; s = 30, T = 4: s cos / T = [1.5, -1.5] and [4.5, 0].
    student = torch.tensor([[0.2, -0.2]], dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([[0.6, 0.0]], dtype=torch.float64)
    p, q = _softmax([1.5, -1.5]), _softmax([4.5, 0.0])
    kl = sum(qi * (math.log(qi) - math.log(pi)) for pi, qi in zip(p, q, strict=True))
    value = distill_kl(30 * student, 30 * teacher, 4.0)
    assert value.item() == pytest.approx(16 * kl, rel=1e-12)
    out = MoCoOutput(
        torch.zeros(1, 3),
        student,
        torch.zeros(1, 2),
        torch.tensor([1, 1]),
        torch.zeros(1, 2).bool(),
        torch.tensor(0.1),
        teacher,
    )
    kd_only = build_loss("gml", [1, 1], gml_gamma=0.0, gml_beta=0.0)(
        out, torch.tensor([0])
    )  # gml_alpha = 1, T = 4 by default
    assert kd_only.item() == pytest.approx(16 * kl, rel=1e-12)
    # d/dcos = (s / T) * T^2 * (p - q) / N = 120 (p - q).
    (grad,) = torch.autograd.grad(kd_only, student)
    torch.testing.assert_close(
        grad, torch.tensor([[120 * (p[0] - q[0]), 120 * (p[1] - q[1])]], dtype=torch.float64)
    )


def test_weights_combine_the_terms_and_teacher_logits_are_needed_only_to_distil():
    query, key, q_idx, k_idx, _, sizes, cos, t_cos, log_t, target = random_case(seed=3)
    args = (query, key, q_idx, k_idx, sizes, cos, t_cos, log_t, target)

    def term(**w):
        return _ours(build_loss("gml", COUNTS, **w), *args).item()

    sup, con, kd = (
        term(gml_alpha=0.0, gml_beta=0.0),
        term(gml_alpha=0.0, gml_gamma=0.0),
        term(gml_beta=0.0, gml_gamma=0.0),
    )
    assert min(sup, con, kd) > 0
    assert term(gml_alpha=0.5, gml_beta=2.0, gml_gamma=0.3) == pytest.approx(
        0.3 * sup + 2 * con + 0.5 * kd, rel=1e-6
    )
    assert term() == pytest.approx(sup + con + kd, rel=1e-6)  # the released CIFAR weights: 1, 1, 1
    own = q_idx[:, None] == k_idx[None, :]
    no_teacher = MoCoOutput(cos.new_zeros(6, 3), cos, query @ key.T, sizes, own, log_t.exp())
    assert build_loss("gml", COUNTS, gml_alpha=0.0)(no_teacher, target).item() == pytest.approx(
        sup + con, rel=1e-6
    )
    with pytest.raises(ValueError, match="teacher_logits"):
        build_loss("gml", COUNTS)(no_teacher, target)


def test_input_checks():
    loss = build_loss("dbm_gml", COUNTS)
    cos = torch.rand(4, 4)
    with pytest.raises(ValueError, match="MoCoOutput"):
        loss(ModelOutput(torch.zeros(4, 3), cos), torch.zeros(4, dtype=torch.long))
    bad = MoCoOutput(
        torch.zeros(4, 3),
        cos,
        torch.rand(4, 11),
        torch.tensor([4, 3, 2, 2]),
        torch.zeros(4, 10).bool(),
        torch.tensor(0.1),
        cos,
    )
    with pytest.raises(ValueError, match="own_keys"):
        loss(bad, torch.zeros(4, dtype=torch.long))
    for key in ("gml_alpha", "gml_beta", "gml_gamma"):
        with pytest.raises(ValueError, match=f"loss.{key}: must be a finite number >= 0"):
            build_loss("gml", COUNTS, **{key: -1.0})
    with pytest.raises(ValueError, match="loss.gml_kd_temperature: must be a finite number > 0"):
        build_loss("gml", COUNTS, gml_kd_temperature=0.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'alpha'"):
        build_loss("gml", COUNTS, alpha=1.0)
    assert (GML.num_views, GML.head, GML.model) == (3, "cosine", "gml_student")
    assert (DBMGML.name, DBMGML.num_views, DBMGML.head, DBMGML.model) == (
        "dbm_gml",
        3,
        "cosine",
        "gml_student",
    )
    assert build_loss("dbm_gml", COUNTS).distills and not build_loss("gml", COUNTS, gml_alpha=0.0).distills


@pytest.mark.parametrize("name", ["gml", "dbm_gml"])
def test_compiled_equals_eager(name):
    torch._dynamo.reset()
    counters.clear()
    loss = build_loss(name, COUNTS)
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    for seed in (0, 1):  # a second batch: no recompilation
        query, key, q_idx, k_idx, _, sizes, cos, t_cos, log_t, target = random_case(
            seed=seed, dtype=torch.float32
        )
        args = (query, key, q_idx, k_idx, sizes, cos, t_cos, log_t, target)
        inputs = (query, key, cos, log_t)
        want = _ours(loss, *args)
        with torch._dynamo.config.patch(error_on_recompile=seed > 0):
            got = _ours(compiled, *args)
        torch.testing.assert_close(got, want)
        for a, b in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs), strict=True):
            torch.testing.assert_close(a, b)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
