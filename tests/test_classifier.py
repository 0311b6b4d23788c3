"""BCL's projection head runs on all 3B rows of a training batch (BatchNorm1d statistics over the three
views), and view 0's embeddings are dropped after it, as the released code (trainer/models.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.config import ModelConfig
from trainer.models import build_classifier

B, CLASSES = 4, 6


def bcl_model():
    torch.manual_seed(0)
    return build_classifier(
        ModelConfig(arch="resnet_tiny", channels_last=False),
        CLASSES,
        "cosine",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        views=3,
    )


def features_of(model, images):
    """The body's pooled features of one training forward (captured by a hook), and the output."""
    seen = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        seen["f"] = output

    handle = model.body.register_forward_hook(keep)
    try:
        out = model(images)
    finally:
        handle.remove()
    return seen["f"], out


def test_head_batch_norm_statistics_cover_all_three_views():
    model = bcl_model().train()
    images = torch.randint(
        0, 256, (3 * B, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    bn = model.head[1]
    momentum = bn.momentum
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    f, out = features_of(model, images)
    with torch.no_grad():
        hidden = model.head[0](f)  # the Linear before the BatchNorm1d, on all 3B rows
    assert hidden.shape[0] == 3 * B
    # one training forward: running = (1 - momentum) * initial + momentum * batch statistic (unbiased var)
    torch.testing.assert_close(bn.running_mean, momentum * hidden.mean(dim=0))
    torch.testing.assert_close(bn.running_var, (1 - momentum) + momentum * hidden.var(dim=0, unbiased=True))
    assert int(bn.num_batches_tracked) == 1
    # what the statistics of views 1-2 alone would have given is measurably different
    assert not torch.allclose(bn.running_mean, momentum * hidden[B:].mean(dim=0), atol=1e-4)


def test_view0_embeddings_dropped_but_view0_gets_the_contrastive_gradient():
    model = bcl_model().train()
    images = torch.randint(
        0, 256, (3 * B, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    reference = bcl_model().train()  # the same weights: the head applied by hand
    f, out = features_of(model, images)
    assert out.embeddings.shape == (2 * B, model.head[3].out_features) and out.logits.shape == (B, CLASSES)
    expected = F.normalize(reference.head(f.detach())[B:], dim=1)
    torch.testing.assert_close(out.embeddings, expected)
    torch.testing.assert_close(out.features, f[:B])
    # a loss on the embeddings alone (views 1-2) still reaches view 0's features, through the BN statistics
    (out.embeddings * torch.randn_like(out.embeddings)).sum().backward()
    assert f.grad[:B].abs().sum() > 0 and f.grad[B:].abs().sum() > 0


def test_eval_mode_has_no_head_and_one_view():
    model = bcl_model().eval()
    out = model(torch.zeros(5, 3, 16, 16, dtype=torch.uint8))
    assert out.logits.shape == (5, CLASSES) and out.embeddings is None and out.centers is None
