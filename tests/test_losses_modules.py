"""Registered loss modules: the registry, errors, each loss against its formula, epoch state, devices."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losses import (
    LOSSES,
    CosineClassifier,
    LossConfig,
    ModelOutput,
    build_loss,
    class_margins,
    dbm_logits,
    drw_weights,
    fbl_curriculum,
    fbl_strengths,
    loss_class,
)
from tests.helpers import LOSS_COUNTS as COUNTS
from tests.helpers import loss_output as make_output
from tests.helpers import output_for

# What the two papers and their baselines fix for each method they name: (head, views, model kind). A loss
# added later needs no line here; the checks below cover it through the registry.
PAPERS = {
    **dict.fromkeys(("ce", "ce_drw", "bs", "la", "fbl"), ("linear", 1, "classifier")),
    **dict.fromkeys(
        ("ldam_drw", "cosine_ce", "dbm_ce", "dbm_drw", "dbm_bs", "dbm_la"), ("cosine", 1, "classifier")
    ),
    "bcl": ("cosine", 3, "classifier"),
    "dbm_bcl": ("cosine", 3, "classifier"),
    "gml": ("cosine", 3, "gml_student"),
    "dbm_gml": ("cosine", 3, "gml_student"),
    "ncl": ("cosine", 2, "ncl_experts"),
    "ncl_linear": ("linear", 2, "ncl_experts"),
    "dbm_ncl": ("cosine", 2, "ncl_experts"),
}
# The losses fed by a classifier's ModelOutput (the others have their own files: tests/test_losses_ncl.py).
CLASSIFIER_LOSSES = [n for n, cls in LOSSES.items() if cls.model == "classifier"]


def test_registry_names_heads_views():
    from trainer.models import MODELS

    assert {n: (LOSSES[n].head, LOSSES[n].num_views, LOSSES[n].model) for n in PAPERS} == PAPERS
    for name, cls in LOSSES.items():  # every loss, registered now or later
        assert cls.head in ("linear", "cosine") and cls.num_views >= 1 and cls.model in MODELS, name
        assert loss_class(name) is cls
    loss = build_loss("dbm_bs", COUNTS)
    assert loss.head == "cosine" and loss.num_views == 1 and loss.num_classes == 5


def test_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="unknown loss 'dbm'; valid: ce, ce_drw, bs, la, ldam_drw"):
        build_loss("dbm", COUNTS)
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        loss_class("focal")
    with pytest.raises(ValueError, match="loss.name: unknown loss 'focal'; valid: ce, ce_drw"):
        build_loss(LossConfig(name="focal"), COUNTS)
    with pytest.raises(ValueError, match="margin_norm: must be one of min, last; got 'max'"):
        build_loss("dbm_ce", COUNTS, margin_norm="max")
    with pytest.raises(TypeError, match="unexpected keyword argument 'fbl_wieght'"):
        build_loss("dbm_ce", COUNTS, fbl_wieght=60.0)
    for name, bad in (
        ("dbm_drw", dict(drw_fraction=1.5)),
        ("cosine_ce", dict(scale=0.0)),
        ("bcl", dict(bcl_temperature=0.0)),
        ("ce_drw", dict(drw_beta=1.0)),
        ("dbm_ce", dict(max_margin=-0.1)),
        ("dbm_ce", dict(scale=float("nan"))),
        ("ldam_drw", dict(ldam_scale=-1.0)),
    ):
        with pytest.raises(ValueError, match=f"loss.{next(iter(bad))}: must be"):
            build_loss(name, COUNTS, **bad)
    with pytest.raises(ValueError, match="class 2 has 0 images"):
        build_loss("ce", [5, 3, 0])


def test_the_config_is_the_only_home_of_defaults():
    """A loss built from a config reads every value it uses from that config, overrides included."""
    cfg = LossConfig(name="dbm_drw", scale=32.0, max_margin=0.3, drw_epoch=7)
    loss = build_loss(cfg, COUNTS)
    assert (loss.logit_map.scale, loss.logit_map.max_margin, loss.objective.drw_epoch) == (32.0, 0.3, 7)
    assert build_loss(cfg, COUNTS, scale=16.0).logit_map.scale == 16.0
    assert build_loss("dbm_drw", COUNTS).logit_map.scale == LossConfig().scale
    torch.testing.assert_close(loss.logit_map.margins, class_margins(COUNTS, 0.3))


@pytest.mark.parametrize("name", CLASSIFIER_LOSSES)
def test_every_loss_rejects_another_width(name):
    loss = build_loss(name, COUNTS)
    output, target = output_for(name, c=len(COUNTS) + 1)
    with pytest.raises(
        ValueError, match=rf"'{name}' was built for 5 classes and expects logits \[N, 5\], got \(8, 6\)"
    ):
        loss(output, target)
    output, target = output_for(name)
    with pytest.raises(ValueError, match=r"target must be \[N\] = \[8\]"):
        loss(output, target[:4])


@pytest.mark.parametrize("name", CLASSIFIER_LOSSES)
def test_every_loss_scalar_finite_gradients(name):
    loss = build_loss(name, COUNTS)
    loss.set_epoch(170, 200)
    output, target = output_for(name)
    value = loss(output, target)
    assert value.ndim == 0 and value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert output.logits.grad is not None and torch.isfinite(output.logits.grad).all()


# GML's contrast splits its gradient on purpose (con sees T_c detached, con_T the similarities detached), so
# its gradients are not the derivative of its value: tests/test_losses_gml.py checks them against the release.
@pytest.mark.parametrize("name", CLASSIFIER_LOSSES)
def test_every_loss_gradcheck_float64(name):
    loss = build_loss(name, COUNTS, **({"fbl_weight": 3.0} if name == "fbl" else {}))
    loss.set_epoch(185, 200)
    output, target = output_for(name, n=4, dtype=torch.float64)
    fields = list(output)
    differentiable = [i for i, t in enumerate(fields) if t is not None and t.requires_grad]
    inputs = tuple(fields[i].detach().requires_grad_() for i in differentiable)

    def fn(*tensors):
        for i, t in zip(differentiable, tensors, strict=True):
            fields[i] = t
        return loss(type(output)(*fields), target)

    assert fn(*inputs).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, inputs)


def test_losses_match_their_formulas():
    output, y = make_output()
    z, cos = output.logits, output.logits
    prior = torch.tensor(COUNTS, dtype=torch.float32).div(sum(COUNTS)).log()
    margins = class_margins(COUNTS, 0.2)

    def check(name, expected, **hparams):
        torch.testing.assert_close(build_loss(name, COUNTS, **hparams)(output, y), expected)

    check("ce", F.cross_entropy(z, y))
    check("bs", F.cross_entropy(z + prior, y))
    check("cosine_ce", F.cross_entropy(32 * cos, y), scale=32.0)
    check("dbm_ce", F.cross_entropy(dbm_logits(cos, y, margins, 32.0), y), scale=32.0, max_margin=0.2)
    check("dbm_bs", F.cross_entropy(dbm_logits(cos, y, margins, 30.0) + prior, y), max_margin=0.2)
    ldam = 0.5 * torch.tensor(COUNTS) ** -0.25 / 6**-0.25
    check("ldam_drw", F.cross_entropy(30 * (cos - F.one_hot(y, 5) * ldam[y, None]), y))


def test_drw_switch_and_weighted_mean():
    output, y = make_output()
    loss = build_loss("dbm_drw", COUNTS, scale=32.0)
    z = dbm_logits(output.logits, y, class_margins(COUNTS), 32.0)
    per_sample = F.cross_entropy(z, y, reduction="none")
    loss.set_epoch(159, 200)
    torch.testing.assert_close(loss(output, y), per_sample.mean())
    loss.set_epoch(160, 200)  # epoch index 160 = the 161st epoch: re-weighting on
    w = drw_weights(COUNTS)[y]
    torch.testing.assert_close(loss(output, y), (w * per_sample).sum() / w.sum())
    loss.set_epoch(10, 200)  # and back (a resumed or restarted schedule)
    torch.testing.assert_close(loss(output, y), per_sample.mean())

    frac = build_loss("ce_drw", COUNTS, drw_fraction=0.8, drw_beta=0.999)
    for epoch, on in ((7, False), (8, True), (9, True)):
        frac.set_epoch(epoch, 10)
        expected = drw_weights(COUNTS, 0.999) if on else torch.ones(5)
        torch.testing.assert_close(frac.objective.weight, expected)
    with pytest.warns(UserWarning, match="never re-weights"):
        build_loss("ce_drw", COUNTS).set_epoch(0, 90)


def test_fbl_curriculum_state_and_eval_mode():
    output, y = make_output()
    loss = build_loss("fbl", COUNTS, fbl_weight=60.0)
    norm = output.features.detach().norm(dim=1, keepdim=True)
    strengths = fbl_strengths(COUNTS)
    for epoch in (0, 50, 195):
        loss.set_epoch(epoch, 200)
        curr = fbl_curriculum(epoch, 200)
        assert loss.logit_map.curriculum.item() == pytest.approx(curr)
        expected = F.cross_entropy(output.logits - curr * 60.0 * strengths / (norm + 1e-12), y)
        torch.testing.assert_close(loss(output, y), expected)
    value = loss(output, y)
    value.backward()
    assert output.features.grad is not None and output.features.grad.abs().sum() > 0  # features not detached
    loss.eval()  # validation: curriculum 0, plain CE, as released
    torch.testing.assert_close(loss(output, y), F.cross_entropy(output.logits, y))


def test_set_epoch_validates():
    loss = build_loss("fbl", COUNTS)
    with pytest.raises(ValueError, match="set_epoch needs ints"):
        loss.set_epoch(-1, 200)
    with pytest.raises(ValueError, match="set_epoch needs ints"):
        loss.set_epoch(1.5, 200)


def test_buffers_follow_to_and_are_not_checkpointed():
    loss = build_loss("dbm_drw", COUNTS)
    assert loss.state_dict() == {}  # derived from the counts and the epoch, which the trainer restores
    loss.to(torch.float64)
    assert {b.dtype for b in loss.buffers()} == {torch.float64}
    loss.to("meta")
    assert {b.device.type for b in loss.buffers()} == {"meta"}
    loss.set_epoch(170, 200)  # in-place updates work wherever the buffers are
    fbl = build_loss("fbl", COUNTS).to("meta")
    fbl.set_epoch(100, 200)
    assert fbl.logit_map.curriculum.device.type == "meta"


@pytest.mark.gpu
@pytest.mark.parametrize("name", CLASSIFIER_LOSSES)
def test_buffers_follow_to_cuda(name):
    loss = build_loss(name, COUNTS).to("cuda")
    loss.set_epoch(170, 200)
    assert all(b.is_cuda for b in loss.buffers())
    output, target = output_for(name)
    on_gpu = type(output)(*(t.detach().cuda() if t is not None else None for t in output))
    expected = build_loss(name, COUNTS)
    expected.set_epoch(170, 200)
    torch.testing.assert_close(loss(on_gpu, target.cuda()).cpu(), expected(output, target))


def test_half_precision_logits_give_a_float32_loss():
    output, y = make_output()
    half = ModelOutput(output.features.bfloat16(), output.logits.bfloat16(), None, None)
    for name in ("ce", "dbm_ce", "fbl", "ldam_drw"):
        loss = build_loss(name, COUNTS)
        loss.set_epoch(190, 200)
        assert loss(half, y).dtype == torch.float32


def test_cosine_classifier():
    torch.manual_seed(0)
    head = CosineClassifier(6, 5)
    assert head.weight.shape == (6, 5) and not any(n == "bias" for n, _ in head.named_parameters())
    torch.testing.assert_close(head.weight.norm(dim=0), torch.ones(5))
    assert head.weight.abs().max() <= 1.0
    features = torch.randn(8, 6) * 7
    cos = head(features)
    assert cos.shape == (8, 5) and cos.abs().max() <= 1 + 1e-6
    expected = F.normalize(features, dim=1) @ head.weight / head.weight.norm(dim=0)
    torch.testing.assert_close(cos, expected)
    x = torch.tensor([[3.0, 0, 0, 0, 0, 0]])
    assert math.isclose(head(x)[0, 2].item(), head.weight[0, 2].item(), rel_tol=1e-6)
    with pytest.raises(ValueError):
        CosineClassifier(0, 5)
