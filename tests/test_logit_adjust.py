"""Logit adjustment (`la`, `dbm_la`, post hoc) and tau-normalisation against hand-written formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from losses import CosineClassifier, ModelOutput, build_loss
from trainer.config import ConfigError, EvalConfig, StepConfig
from trainer.posthoc import eval_views, flat, logit_adjusted, nested, tau_normalised
from trainer.step import EvalStep

COUNTS = [60, 40, 25, 12, 6]
LOGITS = torch.tensor([[2.0, -1.0, 0.5, 0.0, 1.0], [0.1, 0.2, 0.3, 0.4, 0.5], [-1.0, 3.0, 0.0, 0.0, -2.0]])
TARGET = torch.tensor([0, 4, 2])


def hand_ce(z: list[list[float]], y: list[int]) -> float:
    """Mean cross-entropy written out: log sum_c exp(z_c) - z_y."""
    return sum(math.log(sum(math.exp(v) for v in row)) - row[t] for row, t in zip(z, y, strict=True)) / len(y)


def log_p() -> list[float]:
    total = sum(COUNTS)
    return [math.log(n / total) for n in COUNTS]


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_la_loss_value_and_gradient(tau):
    """CE(z + tau log p): the value from the formula, the gradient softmax(z + tau log p) - onehot(y) / N."""
    z = LOGITS.clone().double().requires_grad_()
    loss = build_loss("la", COUNTS, la_tau=tau)(ModelOutput(torch.zeros(3, 2), z), TARGET)
    adjusted = [[v + tau * p for v, p in zip(row, log_p(), strict=True)] for row in LOGITS.tolist()]
    assert loss.item() == pytest.approx(hand_ce(adjusted, TARGET.tolist()), rel=1e-6)
    loss.backward()
    expected = torch.softmax(torch.tensor(adjusted, dtype=torch.float64), 1)
    expected[torch.arange(3), TARGET] -= 1.0
    torch.testing.assert_close(z.grad, expected / 3, rtol=1e-6, atol=1e-9)


def test_la_at_tau_one_is_balanced_softmax_and_zero_is_ce():
    out = ModelOutput(torch.zeros(3, 2), LOGITS)
    assert build_loss("la", COUNTS)(out, TARGET).item() == build_loss("bs", COUNTS)(out, TARGET).item()
    assert build_loss("la", COUNTS, la_tau=0.0)(out, TARGET).item() == pytest.approx(
        build_loss("ce", COUNTS)(out, TARGET).item(), rel=1e-6
    )


def test_dbm_la_is_dbm_logits_plus_tau_log_prior():
    """DBM's margined, scaled cosines first, then tau * log p: dbm_bs at tau = 1; the gradient matches the
    dense formula's."""
    cos = (LOGITS / 3.5).clone().requires_grad_()
    ref = cos.detach().clone().requires_grad_()
    loss = build_loss("dbm_la", COUNTS, la_tau=0.5, scale=16.0)
    got = loss(ModelOutput(torch.zeros(3, 2), cos), TARGET)
    from losses import class_margins, dbm_logits

    z = dbm_logits(ref, TARGET, class_margins(COUNTS, 0.1), 16.0) + 0.5 * torch.tensor(log_p())
    want = torch.nn.functional.cross_entropy(z, TARGET)
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    torch.testing.assert_close(cos.grad, ref.grad)
    out = ModelOutput(torch.zeros(3, 2), cos.detach())
    assert (
        build_loss("dbm_la", COUNTS)(out, TARGET).item() == build_loss("dbm_bs", COUNTS)(out, TARGET).item()
    )


def test_la_tau_range_is_checked():
    with pytest.raises(ValueError, match="loss.la_tau: must be a finite number >= 0"):
        build_loss("la", COUNTS, la_tau=-1.0)


def test_posthoc_logit_adjustment_formula():
    got = logit_adjusted(LOGITS, torch.tensor(log_p()), tau=1.5, scale=2.0)
    want = [[2.0 * v - 1.5 * p for v, p in zip(row, log_p(), strict=True)] for row in LOGITS.tolist()]
    torch.testing.assert_close(got, torch.tensor(want))


def test_tau_norm_linear_and_cosine_formulas():
    g = torch.Generator().manual_seed(0)
    f, w = torch.randn(4, 3, generator=g), torch.randn(5, 3, generator=g)  # nn.Linear layout [C, d]
    for tau in (0.0, 0.5, 1.0, 2.0):
        want = [
            [sum(fi[k] * w[c, k].item() for k in range(3)) / float(w[c].norm()) ** tau for c in range(5)]
            for fi in f.tolist()
        ]
        torch.testing.assert_close(tau_normalised(f, w, tau, "linear"), torch.tensor(want))
    cosine = CosineClassifier(3, 5)
    with torch.no_grad():
        cosine.weight.mul_(torch.arange(1.0, 6.0))  # class vectors of norms 1..5
    # tau = 1 is the cosine head's own output; tau = 0 keeps the norms: normalize(f) @ w.
    torch.testing.assert_close(tau_normalised(f, cosine.weight, 1.0, "cosine"), cosine(f))
    nf = f / f.norm(dim=1, keepdim=True)
    torch.testing.assert_close(tau_normalised(f, cosine.weight, 0.0, "cosine"), nf @ cosine.weight)


class _Linear(nn.Module):
    """A model whose features are its input and whose classifier is an nn.Linear (as LongTailClassifier)."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(3, 5)

    def forward(self, images, labels=None):
        return ModelOutput(images, self.classifier(images))


def test_eval_step_reports_adjusted_groups_beside_the_plain_ones():
    torch.manual_seed(0)
    model = _Linear()
    counts = [150, 150, 50, 10, 10]  # many, many, medium, few, few
    views = eval_views(EvalConfig(la_tau=1.0, tau_norm=1.0), model, build_loss("ce", counts), counts)
    step = EvalStep(model, StepConfig(mode="eager", precision="fp32"), counts, views=views)
    x, y = torch.randn(40, 3), torch.arange(40) % 5
    step(x, y)
    report = step.read_metrics()
    with torch.no_grad():
        z = model.classifier(x)
        w = model.classifier.weight
        predictions = {
            "plain": z.argmax(1),
            "la": (z - torch.tensor(counts).double().div(sum(counts)).log().float()).argmax(1),
            "tau_norm": (x @ (w / w.norm(dim=1, keepdim=True)).t()).argmax(1),
        }
    for name, pred in predictions.items():
        per_class = [float((pred[y == c] == c).float().mean()) for c in range(5)]
        got = report if name == "plain" else report[name]
        assert got["few"] == pytest.approx((per_class[3] + per_class[4]) / 2)
        assert got["many"] == pytest.approx((per_class[0] + per_class[1]) / 2)
        assert got["top1"] == pytest.approx(float((pred == y).float().mean()))
    assert flat(report)["tau_norm_few"] == report["tau_norm"]["few"]
    assert set(nested(report)) == {"la", "tau_norm"}


def test_tau_norm_needs_one_classifier():
    with pytest.raises(ConfigError, match="eval.tau_norm: the Sequential model"):
        eval_views(EvalConfig(tau_norm=1.0), nn.Sequential(nn.Linear(2, 2)), build_loss("ce", COUNTS), COUNTS)
    with pytest.raises(ValueError, match="eval.la_tau: must be a finite number >= 0"):
        EvalConfig(la_tau=-0.5)
