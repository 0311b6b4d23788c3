"""BCL's balanced contrastive term (BCL, CVPR 2022) and the `bcl` / `dbm_bcl` losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losses import ModelOutput, balanced_contrastive, build_loss, class_margins, dbm_logits, log_prior


def test_hand_worked_with_classes_seen_only_through_their_centres():
    # B = 1 image of class 0; both contrastive views embed to e1. Centres: c0 = e1, c1 = e2, c2 = -e1.
    # Classes 1 and 2 have no anchor: they appear only as centres. T = 1.
    # Anchor v1: S = [v1: 1 (self, left out), v2: 1, c0: 1, c1: 0, c2: -1]; cnt = [3, 1, 1]
    # P = {v2, c0}; D = e/(3-1) + e/(3-1) + e^0/1 + e^-1/1; L = log D - mean_P S = log(e + 1 + 1/e) - 1,
    # and the same for v2 by symmetry.
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    embeddings = torch.stack([e1, e1])
    centers = torch.stack([e1, e2, -e1])
    expected = math.log(math.e + 1 + 1 / math.e) - 1
    value = balanced_contrastive(embeddings, centers, torch.tensor([0]), temperature=1.0)
    assert value.item() == pytest.approx(expected, abs=1e-6)
    assert value.item() == pytest.approx(0.407606, abs=1e-6)
    # T = 0.5 doubles every similarity: D = e^2 + e^0 + e^-2 (the two class-0 terms halve), mean_P S = 2.
    half = balanced_contrastive(embeddings, centers, torch.tensor([0]), temperature=0.5)
    assert half.item() == pytest.approx(math.log(math.e**2 + 1 + math.e**-2) - 2, abs=1e-6)


def reference_loop(embeddings, centers, target, temperature):
    """The spec's sets and counts, literally, one anchor at a time (float64)."""
    anchors = torch.cat([embeddings, embeddings.new_zeros(0, embeddings.shape[1])]).tolist()
    queries = anchors + centers.tolist()
    anchor_labels = target.tolist() * 2
    labels = anchor_labels + list(range(len(centers)))
    count = {k: anchor_labels.count(k) + 1 for k in range(len(centers))}
    losses = []
    for i, a in enumerate(anchors):
        sim = [sum(x * y for x, y in zip(a, q, strict=True)) / temperature for q in queries]
        positives = [j for j in range(len(queries)) if j != i and labels[j] == anchor_labels[i]]
        denom = sum(
            math.exp(sim[j]) / (count[labels[j]] - (j in positives)) for j in range(len(queries)) if j != i
        )
        losses.append(-sum(sim[j] - math.log(denom) for j in positives) / len(positives))
    return sum(losses) / len(losses)


def upstream_balscl(centers1, features, targets, num_classes, temperature):
    """FlamieZhu/Balanced-Contrastive-Learning BalSCL.forward, transcribed (features: [B, 2, e])."""
    batch_size = features.shape[0]
    targets = targets.contiguous().view(-1, 1)
    targets_centers = torch.arange(num_classes).view(-1, 1)
    targets = torch.cat([targets.repeat(2, 1), targets_centers], dim=0)
    batch_cls_count = torch.eye(num_classes)[targets].sum(dim=0).squeeze()
    mask = torch.eq(targets[: 2 * batch_size], targets.T).float()
    logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(batch_size * 2).view(-1, 1), 0)
    mask = mask * logits_mask
    features = torch.cat(torch.unbind(features, dim=1), dim=0)
    features = torch.cat([features, centers1], dim=0)
    logits = features[: 2 * batch_size].mm(features.T)
    logits = torch.div(logits, temperature)
    logits_max, _ = torch.max(logits, dim=1, keepdim=True)
    logits = logits - logits_max.detach()
    exp_logits = torch.exp(logits) * logits_mask
    per_ins_weight = (
        torch.tensor([batch_cls_count[i] for i in targets]).view(1, -1).expand(2 * batch_size, -1) - mask
    )
    exp_logits_sum = exp_logits.div(per_ins_weight).sum(dim=1, keepdim=True)
    log_prob = logits - torch.log(exp_logits_sum)
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return (-mean_log_prob_pos).view(2, batch_size).mean()


def random_batch(b=6, c=5, e=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(2 * b, e, generator=g, dtype=dtype), dim=1).requires_grad_()
    centers = F.normalize(torch.randn(c, e, generator=g, dtype=dtype), dim=1).requires_grad_()
    target = torch.randint(0, c - 1, (b,), generator=g)  # the last class: centre only
    return embeddings, centers, target


def test_matches_literal_reference_and_upstream_code():
    for seed in range(3):
        embeddings, centers, target = random_batch(seed=seed)
        value = balanced_contrastive(embeddings, centers, target, 0.1)
        assert value.item() == pytest.approx(reference_loop(embeddings, centers, target, 0.1), rel=1e-9)
        b = target.shape[0]
        features = torch.stack([embeddings[:b], embeddings[b:]], dim=1)  # upstream's [B, 2, e] layout
        torch.testing.assert_close(value, upstream_balscl(centers, features, target, centers.shape[0], 0.1))


def test_gradcheck_and_float32_stability():
    embeddings, centers, target = random_batch(b=3, c=4)
    assert torch.autograd.gradcheck(
        lambda a, c: balanced_contrastive(a, c, target, 0.2), (embeddings, centers)
    )
    # T = 0.01 puts similarities at +-100: the detached row max keeps exp() in range.
    embeddings, centers, target = random_batch(dtype=torch.float32)
    value = balanced_contrastive(embeddings, centers, target, 0.01)
    value.backward()
    assert (
        torch.isfinite(value) and torch.isfinite(embeddings.grad).all() and torch.isfinite(centers.grad).all()
    )


def test_bcl_losses_total():
    counts = [50, 20, 8, 3, 2]
    embeddings, centers, target = random_batch(dtype=torch.float32)
    g = torch.Generator().manual_seed(5)
    cosine = torch.rand(6, 5, generator=g) * 2 - 1
    output = ModelOutput(torch.randn(6, 4), cosine, embeddings, centers)
    scl = balanced_contrastive(embeddings, centers, target, 0.1)
    prior = log_prior(counts)
    bcl = build_loss("bcl", counts, scale=32.0)
    torch.testing.assert_close(
        bcl(output, target), 2.0 * F.cross_entropy(32 * cosine + prior, target) + 0.6 * scl
    )
    dbm = build_loss("dbm_bcl", counts, scale=32.0, max_margin=0.2, bcl_alpha=1.0, bcl_beta=0.35)
    z = dbm_logits(cosine, target, class_margins(counts, 0.2), 32.0)
    torch.testing.assert_close(dbm(output, target), F.cross_entropy(z + prior, target) + 0.35 * scl)
    scl_t = balanced_contrastive(embeddings, centers, target, 0.07)
    hot = build_loss("bcl", counts, bcl_temperature=0.07)
    torch.testing.assert_close(
        hot(output, target), 2.0 * F.cross_entropy(30 * cosine + prior, target) + 0.6 * scl_t
    )
    assert bcl.num_views == dbm.num_views == 3 and bcl.head == dbm.head == "cosine"


def test_bcl_shape_errors():
    embeddings, centers, target = random_batch(dtype=torch.float32)
    loss = build_loss("bcl", [50, 20, 8, 3, 2])
    cosine = torch.zeros(6, 5)
    with pytest.raises(ValueError, match="must carry embeddings"):
        loss(ModelOutput(torch.zeros(6, 4), cosine), target)
    with pytest.raises(ValueError, match=r"embeddings must be \[2B, e\] = \[12, e\]"):
        loss(ModelOutput(torch.zeros(6, 4), cosine, embeddings[:6], centers), target)
    with pytest.raises(ValueError, match=r"centers must be \[C, e\] = \[5, 3\]"):
        loss(ModelOutput(torch.zeros(6, 4), cosine, embeddings, centers[:4]), target)
