"""NCL's losses: the hard-category mask, NBOD, InfoNCE and the `ncl` / `ncl_linear` /
`dbm_ncl` totals, against hand-worked cases and a loop-by-loop transcription of the DBM release."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from losses import LOSSES, LossConfig, build_loss
from losses.ncl import NCL_LOSSES, expert_rows, hard_category_mask, info_nce, nbod, nil_nbod
from losses.output import ExpertOutput, ModelOutput

COUNTS = [40, 20, 9, 4, 2]  # sorted by frequency: the release's last-label margin normaliser = the minimum
NAMES = [cls.name for cls in NCL_LOSSES]
# The recipes' scales: s = 16 for dbm_ncl (the release's NCL model), 1 for ncl (cosines unscaled).
SCALES = {"dbm_ncl": 16.0, "ncl": 1.0, "ncl_linear": 30.0}


def ncl_loss(name: str, **overrides):
    """The registered loss as a recipe builds it (the recipe's scale unless overridden)."""
    return build_loss(name, COUNTS, **{"scale": SCALES[name], **overrides})


def expert_output(raw, contrast, d: int = 2) -> ExpertOutput:
    """An ExpertOutput around raw [K, N, C] and contrast [K, N, 1+Q], with zero features [N, K*d]."""
    return ExpertOutput(raw.new_zeros(raw.shape[1], raw.shape[0] * d), raw.mean(0), raw, contrast)


def test_mask_keeps_top_k_with_the_target_forced_in():
    scores = torch.tensor([[0.9, 0.1, 0.5, -0.2], [0.9, 0.1, 0.5, -0.2], [0.3, 0.8, -0.5, 0.1]])
    target = torch.tensor([3, 0, 2])
    mask = hard_category_mask(scores, target, 2)
    # row 0: the target (the lowest score) and the best other; row 1: the target is the best already.
    expected = torch.tensor([[1.0, 0, 0, 1], [1, 0, 1, 0], [0, 1, 1, 0]])
    assert torch.equal(mask, expected)
    assert torch.equal(hard_category_mask(scores, target, 1), F.one_hot(target, 4).float())
    assert torch.equal(hard_category_mask(scores, target, 9), torch.ones(3, 4))  # k >= C keeps all


def test_masked_logits_are_zero_not_minus_inf_value_and_gradient():
    # One expert (NBOD = 0), one row, target 0, mask keeps columns 0 and 2: masked = [2, 0, 0.5].
    logits = torch.tensor([[[2.0, 1.0, 0.5]]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    loss = nil_nbod(logits, mask, torch.tensor([0]), diversity=0.6)
    e = math.exp
    full = math.log(e(2) + e(1) + e(0.5)) - 2
    hcm = math.log(e(2) + e(0) + e(0.5)) - 2  # the masked column counts as a logit of 0 (exp 1)
    assert loss.item() == pytest.approx(full + hcm, abs=1e-12)
    assert loss.item() != pytest.approx(full + math.log(e(2) + e(0.5)) - 2)  # what -inf would give
    loss.backward()
    z1 = e(2) + e(1) + e(0.5)
    z2 = e(2) + 1 + e(0.5)
    grad = [e(2) / z1 - 1 + e(2) / z2 - 1, e(1) / z1, e(0.5) / z1 + e(0.5) / z2]  # column 1: full CE only
    torch.testing.assert_close(logits.grad[0, 0], torch.tensor(grad, dtype=torch.float64))


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def test_nbod_hand_worked_factor_pairs_and_batch_mean():
    # p0 = (1/2, 1/2), p1 = (3/4, 1/4): NBOD = 0.6 / (K - 1) * (KL(p1||p0) + KL(p0||p1)).
    two = torch.tensor([[[0.0, 0.0]], [[math.log(3.0), 0.0]]], dtype=torch.float64)
    pair = _kl([0.75, 0.25], [0.5, 0.5]) + _kl([0.5, 0.5], [0.75, 0.25])
    assert nbod(two, 0.6).item() == pytest.approx(0.6 * pair, rel=1e-7)
    assert nbod(two, 1.0).item() == pytest.approx(pair, rel=1e-7)
    # A third expert equal to expert 0: 6 ordered pairs, two of them zero, the rest 2 x pair; / (K-1) = 2.
    three = torch.cat([two, two[:1]])
    assert nbod(three, 0.6).item() == pytest.approx(0.6 * 2 * pair / 2, rel=1e-7)
    # batchmean: the same row twice gives the same value.
    assert nbod(two.repeat(1, 2, 1), 0.6).item() == pytest.approx(0.6 * pair, rel=1e-7)
    assert nbod(two[:1], 0.6).item() == 0.0  # one expert: nothing to distil


def released_nbod(inputs, factor):
    """`NBOD` of dbm_ltr:cifar/losses/ncl.py, restated: F.kl_div over ordered pairs, / (K - 1)."""
    soft = [F.softmax(x, dim=1) for x in inputs]
    logs = [torch.log(p + 1e-9) for p in soft]
    total = 0
    for i in range(len(inputs)):
        for j in range(len(inputs)):
            if i != j:
                total = total + factor * F.kl_div(logs[i], soft[j], reduction="batchmean")
    return total / (len(inputs) - 1)


def test_nbod_equals_the_released_loop_in_value_and_gradient():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 6, 5, generator=g, dtype=torch.float64) * 4).requires_grad_()
    ours = nbod(logits, 0.6)
    ref = released_nbod(list(logits), 0.6)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        *(torch.autograd.grad(v, logits)[0] for v in (ours, ref)), rtol=1e-9, atol=1e-12
    )


def test_info_nce_hand_worked_per_expert_sum_batch_mean():
    # Expert 0: [q.k, q.queue] = [1, 0, 0] at T = 0.2 -> CE([5, 0, 0], 0) = log(e^5 + 2) - 5.
    # Expert 1: [0.5, 0.5, -1] -> log(2 e^2.5 + e^-5) - 2.5. Summed over experts.
    contrast = torch.tensor([[[1.0, 0.0, 0.0]], [[0.5, 0.5, -1.0]]], dtype=torch.float64)
    e0 = math.log(math.exp(5) + 2) - 5
    e1 = math.log(2 * math.exp(2.5) + math.exp(-5)) - 2.5
    assert info_nce(contrast, 0.2).item() == pytest.approx(e0 + e1, abs=1e-12)
    assert info_nce(contrast.repeat(1, 3, 1), 0.2).item() == pytest.approx(e0 + e1, abs=1e-12)  # batch mean
    contrast.requires_grad_()
    info_nce(contrast, 0.2).backward()
    z = math.exp(5) + 2  # d/dx0 = (softmax_0 - 1) / T, d/dx_j = softmax_j / T
    torch.testing.assert_close(
        contrast.grad[0, 0], torch.tensor([(math.exp(5) / z - 1) / 0.2, 1 / z / 0.2, 1 / z / 0.2]).double()
    )


def released_dbm(cos, target, counts, scale, max_margin=0.1, tau=1.0, lambda_inst=1.0):
    """`DBMargin.forward` of dbm_ltr:cifar/losses/dbm.py: arccos form, last-label margin normaliser."""
    prob = torch.tensor(counts, dtype=cos.dtype) / sum(counts)
    margin = ((1 / prob**tau) / (1 / prob**tau)[-1]).unsqueeze(0) * max_margin
    onehot = F.one_hot(target, len(counts))
    incorrect = cos.argmax(dim=-1) != target
    margin_cls = margin * onehot
    margin_inst = margin_cls * (1 - cos) / 2 * incorrect.unsqueeze(-1)
    return scale * torch.cos(torch.acos(cos) + margin_cls + lambda_inst * margin_inst)


def released_ncl_total(raw, contrast, target, counts, hcm_n, expert_map, prior=None, mask_from=None):
    """`NIL_NBOD.forward` + the combiner's MoCo term, one expert at a time (dbm_ltr:cifar/losses/ncl.py,
    resnet_ncl.py:389-451). `prior` / `mask_from` swap in the wrong prior / mask source (for the tests that
    show the comparison can fail)."""
    prior = torch.tensor(counts, dtype=raw.dtype).log() if prior is None else prior
    scores = raw[0] if mask_from is None else mask_from
    select = scores.scatter(1, target.unsqueeze(1), 999999).sort(descending=True, dim=1)[1][:, :hcm_n]
    mask = torch.zeros_like(raw[0]).scatter(1, select, 1)
    balanced, masked, loss_ce, loss_hcm = [], [], 0, 0
    for k in range(raw.shape[0]):
        logits = expert_map(raw[k], target) + prior.unsqueeze(0).expand(raw.shape[1], -1)
        balanced.append(logits)
        masked.append(logits * mask)
        loss_ce = loss_ce + F.cross_entropy(logits, target)
        loss_hcm = loss_hcm + F.cross_entropy(masked[k], target)
    loss = released_nbod(balanced, 0.6) + released_nbod(masked, 0.6) + loss_ce + loss_hcm
    con = 0
    for k in range(raw.shape[0]):
        con = con + F.cross_entropy(contrast[k] / 0.2, torch.zeros(raw.shape[1], dtype=torch.long))
    return loss + 1.0 * con


def _inputs(k=3, n=6, c=5, q=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    raw = (torch.rand(k, n, c, generator=g, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    contrast = (torch.rand(k, n, 1 + q, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    target = torch.randint(0, c, (n,), generator=g)
    return raw, contrast, target


MAPS = {
    "dbm_ncl": lambda x, y: released_dbm(x, y, COUNTS, 16.0),
    "ncl": lambda x, y: x,  # s = 1: the cosines unscaled, as the release with --use_norm, without --use_dbm
    "ncl_linear": lambda x, y: x,
}


@pytest.mark.parametrize("name", NAMES)
def test_total_equals_the_released_code_in_value_and_gradient(name):
    loss = ncl_loss(name, ncl_hcm_n=3).double()
    raw, contrast, target = _inputs()
    ours = loss(expert_output(raw, contrast), target)
    ref = released_ncl_total(raw, contrast, target, COUNTS, 3, MAPS[name])
    # log n_c is kept in float32 (the release's FloatTensor): agreement to float32 rounding of log n.
    torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-9)
    for got, want in zip(
        torch.autograd.grad(ours, (raw, contrast)), torch.autograd.grad(ref, (raw, contrast)), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)
    # The comparison can fail: log p instead of log n, or the mask from another expert, changes the value.
    log_prior = torch.tensor(COUNTS, dtype=torch.float64).div(sum(COUNTS)).log()
    wrong_prior = released_ncl_total(raw, contrast, target, COUNTS, 3, MAPS[name], prior=log_prior)
    wrong_mask = released_ncl_total(raw, contrast, target, COUNTS, 3, MAPS[name], mask_from=raw[1])
    assert abs(wrong_prior.item() - ours.item()) > 1e-3 and abs(wrong_mask.item() - ours.item()) > 1e-3


def test_dbm_ncl_scale_and_hard_flag_are_per_expert():
    # Expert 0 gets row 0 right, expert 1 wrong: only expert 1's target logit carries the instance margin.
    loss = ncl_loss("dbm_ncl")
    raw = torch.tensor([[[0.8, 0.1, 0.0, 0.0, 0.0]], [[0.3, 0.6, 0.0, 0.0, 0.0]]])
    rows = torch.tensor([0, 0])
    output = expert_output(raw, raw.new_zeros(2, 1, 2), d=3)
    logits = loss.logit_map(expert_rows(output), rows).dense(rows).reshape(2, 1, 5)
    m = 0.1 * 2 / 40  # class 0's margin: K * n_min / n_0
    assert logits[0, 0, 0].item() == pytest.approx(16 * math.cos(math.acos(0.8) + m), rel=1e-6)
    hard = m * (1 + (1 - 0.3) / 2)
    assert logits[1, 0, 0].item() == pytest.approx(16 * math.cos(math.acos(0.3) + hard), rel=1e-6)
    assert logits[1, 0, 1].item() == pytest.approx(16 * 0.6, rel=1e-6)


def test_expert_rows_are_expert_major():
    # features [N, K*d]: row i holds expert 0's d features, then expert 1's; rows k*N + i come out.
    raw = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    features = torch.arange(3 * 2 * 5, dtype=torch.float32).reshape(3, 10)
    rows = expert_rows(ExpertOutput(features, raw.mean(0), raw, None))
    assert torch.equal(rows.logits, raw.reshape(6, 4))
    assert torch.equal(rows.features[:3], features[:, :5]) and torch.equal(rows.features[3:], features[:, 5:])


def test_config_defaults_parts_and_contract():
    cfg = LossConfig(name="dbm_ncl")
    defaults = (cfg.ncl_hcm_n, cfg.ncl_diversity, cfg.ncl_contrast_weight, cfg.ncl_temperature)
    assert defaults == (30, 0.6, 1.0, 0.2)  # the release's CIFAR-100 values
    loss = build_loss(cfg, COUNTS)
    assert (loss.objective.ncl_hcm_n, loss.objective.ncl_diversity) == (30, 0.6)
    assert (loss.contrast.ncl_contrast_weight, loss.contrast.ncl_temperature) == (1.0, 0.2)
    assert loss.logit_map.scale == 30.0  # LossConfig's default: the recipes set 16
    assert {(LOSSES[n].name, LOSSES[n].head, LOSSES[n].num_views, LOSSES[n].model) for n in NAMES} == {
        ("ncl", "cosine", 2, "ncl_experts"),
        ("ncl_linear", "linear", 2, "ncl_experts"),
        ("dbm_ncl", "cosine", 2, "ncl_experts"),
    }
    # s scales the cosines before log n is added: s = 2 on raw x equals s = 1 on 2x.
    raw, contrast, target = _inputs()
    torch.testing.assert_close(
        ncl_loss("ncl", scale=2.0).double()(expert_output(raw, contrast), target),
        ncl_loss("ncl").double()(expert_output(2 * raw, contrast), target),
    )
    # contrast weight 0 leaves the classification loss alone; the weight scales InfoNCE linearly.
    out = expert_output(raw, contrast)
    base = ncl_loss("ncl_linear", ncl_hcm_n=3, ncl_contrast_weight=0.0).double()(out, target)
    full = ncl_loss("ncl_linear", ncl_hcm_n=3, ncl_contrast_weight=2.0).double()(out, target)
    assert (full - base).item() == pytest.approx(2 * info_nce(contrast, 0.2).item(), rel=1e-9)


def test_errors_name_what_is_missing():
    loss = ncl_loss("dbm_ncl")
    raw, contrast, target = _inputs()
    with pytest.raises(ValueError, match="expert_logits and contrast_logits"):
        loss(ModelOutput(raw[0], raw[0]), target)
    with pytest.raises(ValueError, match="contrast_logits"):
        loss(expert_output(raw, None), target)
    with pytest.raises(ValueError, match=r"built for 5 classes"):
        loss(expert_output(raw[..., :4], contrast), target)
    with pytest.raises(ValueError, match=r"target must be \[N\] = \[6\]"):
        loss(expert_output(raw, contrast), target[:5])
    with pytest.raises(ValueError, match=r"\[K, N, 1\+Q\]"):
        loss(expert_output(raw, contrast[:2]), target)
    with pytest.raises(ValueError, match=r"features must be \[N, K\*d\] = \[6, 3\*d\]"):
        loss(ExpertOutput(raw[0], raw[0], raw, contrast), target)  # [6, 5]: not K*d wide
    for key, bad in (
        ("ncl_hcm_n", 0),
        ("ncl_temperature", 0.0),
        ("scale", -1.0),
        ("ncl_diversity", -0.1),
        ("ncl_contrast_weight", float("nan")),
    ):
        with pytest.raises(ValueError, match=f"loss.{key}"):
            build_loss("dbm_ncl", COUNTS, **{key: bad})
    with pytest.raises(ValueError, match="positive"):
        build_loss("ncl_linear", [3, 0, 2])


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", NAMES)
def test_compiled_equals_eager_one_graph(name, backend):
    torch._dynamo.reset()
    counters.clear()
    loss = ncl_loss(name, ncl_hcm_n=3)
    compiled = torch.compile(loss, backend=backend, fullgraph=True, dynamic=False)
    raw, contrast, target = (t.float() if t.is_floating_point() else t for t in _inputs())
    results = []
    for fn in (loss, compiled):
        r, c = raw.detach().requires_grad_(), contrast.detach().requires_grad_()
        value = fn(expert_output(r, c), target)
        results.append((value.detach(), *torch.autograd.grad(value, (r, c))))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
