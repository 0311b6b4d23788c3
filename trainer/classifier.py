"""The classifier every loss but NCL's and GML's trains (model kind "classifier"), and the heads kinds share.

`build_classifier(cfg, num_classes, head, mean=..., std=..., views=1)` stacks `Normalize` (uint8 -> float, the
model's first operation, so it fuses into the compiled step) -> a body (`arch_for`; pooled features f) -> a
classifier from `HEADS` ("linear": nn.Linear with bias; "cosine": raw cosines, the loss applies the scale) ->
BCL's two projection heads when the loss takes several views. With `model.bn_views` > 1 the body encodes
several views of each image in one pass and only view 0 is classified: the extra views reach BatchNorm's
statistics only (GML's MoCo-trained teacher).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losses import CosineClassifier, Loss, ModelOutput
from pipelines.augment import Normalize
from trainer.archs import arch_for
from trainer.config import ModelConfig
from trainer.resnet_cifar import kaiming_init_

HEADS: dict[str, Callable[[int, int], nn.Module]] = {
    "linear": lambda d, c: nn.Linear(d, c),
    "cosine": lambda d, c: CosineClassifier(d, c),
}

# [model] keys that size this kind's parameters (besides arch), and the stage-1 run a stage-2 body is from
SHAPE_KEYS = ("bcl_hidden", "bcl_embed", "init_from")


def mlp(d: int, hidden: int, out: int, *, batch_norm: bool = True) -> nn.Sequential:
    """Linear(d, hidden) -> [BatchNorm1d] -> ReLU -> Linear(hidden, out), PyTorch's default init: BCL's and
    GML's projection heads (with BatchNorm), NCL's projectors (without)."""
    norm = [nn.BatchNorm1d(hidden)] if batch_norm else []
    return nn.Sequential(nn.Linear(d, hidden), *norm, nn.ReLU(inplace=True), nn.Linear(hidden, out))


class LongTailClassifier(nn.Module):
    """normalize -> body -> classifier (+ BCL heads). See `build_classifier`."""

    def __init__(
        self,
        normalize: nn.Module,
        body: nn.Module,
        classifier: nn.Module,
        bcl: tuple[int, int] | None,
        *,
        views: int,
        channels_last: bool,
        head_fp32: bool,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.body = body
        self.classifier = classifier
        self.channels_last = channels_last
        self.head_fp32 = head_fp32
        d = body.feature_dim
        self.feature_dim = d
        self.frozen_body = False  # stage 2 (trainer/stage2.py): the body neither learns nor updates its BN
        # images per sample in a training batch, view-major: the loss's num_views (BCL), or model.bn_views
        self.views = views
        self.bcl = bcl is not None
        if bcl is not None:
            hidden, embed = bcl
            self.head = mlp(d, hidden or d, embed)  # on the features of all 3 views
            self.head_fc = mlp(d, hidden or d, embed)  # on the raw class vectors -> class centres
            # Every rank computes the centres from the same (replicated) weights: its BatchNorm1d has
            # nothing to synchronise, and `trainer.sync_bn.convert_sync_bn` leaves it alone.
            self.head_fc.sync_bn = False

    def freeze_body(self) -> None:
        """No body parameter requires a gradient and the body stays in eval mode across `train()`."""
        self.body.requires_grad_(False)
        self.frozen_body = True
        self.body.eval()

    def train(self, mode: bool = True) -> LongTailClassifier:
        super().train(mode)
        if self.frozen_body:
            self.body.eval()  # BatchNorm running statistics stay the stage-1 ones
        return self

    def class_vectors(self) -> Tensor:
        """The raw (un-normalised) class vectors as rows, [C, d]: BCL's `W^T`."""
        w = self.classifier.weight
        return w.t() if isinstance(self.classifier, CosineClassifier) else w

    def _heads(self, f: Tensor, contrast: bool) -> ModelOutput:
        if not contrast:
            return ModelOutput(f.float(), self.classifier(f).float())
        # A BCL training batch stacks [v0; v1; v2] (one encoder pass, BN statistics shared across views):
        # classify view 0, contrast the others. The projection MLP runs on all 3B rows, so its BatchNorm1d
        # statistics include view 0 (and view 0's features get the gradient that flows through them), and
        # view 0's embeddings are dropped afterwards, as the released code does.
        b = f.shape[0] // self.views
        logits = self.classifier(f[:b])
        embeddings = F.normalize(self.head(f)[b:].float(), dim=1)
        centers = F.normalize(self.head_fc(self.class_vectors()).float(), dim=1)
        return ModelOutput(f[:b].float(), logits.float(), embeddings, centers)

    def forward(self, images: Tensor, labels: Tensor | None = None) -> ModelOutput:
        """`labels` are not used: every model takes them (see the module docstring)."""
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)  # no-op for the loaders' batches
        contrast = self.bcl and self.training  # in eval mode there is one view and only the logits
        several = self.training and self.views > 1
        if several and images.shape[0] % self.views:
            raise ValueError(
                f"classifier: a training batch stacks {self.views} views, got {images.shape[0]} images"
            )
        f = self.body(self.normalize(images))
        if several and not self.bcl:  # model.bn_views: views 1.. only shaped BatchNorm's statistics
            f = f[: f.shape[0] // self.views]
        if self.head_fp32:
            # Raw cosines feed an arccos (DBM) and a scale of ~30: keep the (small) heads out of bf16.
            with torch.autocast(f.device.type, enabled=False):
                return self._heads(f.float(), contrast)
        return self._heads(f, contrast)


def build_classifier(
    cfg: ModelConfig,
    num_classes: int,
    head: str,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    views: int = 1,
    bn_views: int = 1,
) -> LongTailClassifier:
    """The model for `cfg.arch` (validated by ModelConfig) with a `head` classifier over `num_classes`;
    inputs are uint8 NCHW. `views` > 1 (the loss's `num_views`: BCL) adds the contrastive heads; `bn_views`
    > 1 (`model.bn_views`, with a one-view loss) makes a training batch stack that many views, of which only
    view 0 is classified."""
    bcl_heads = views > 1
    if bcl_heads and bn_views > 1:
        raise ValueError(f"bn_views={bn_views} needs a one-view loss, got views={views}")
    if head not in HEADS:
        raise ValueError(f"unknown classifier head {head!r}; valid: {', '.join(HEADS)}")
    arch = arch_for(cfg.arch)
    body = arch.build(cfg.pretrained)
    classifier = HEADS[head](body.feature_dim, num_classes)
    hidden = cfg.bcl_hidden or arch.bcl_hidden
    embed = cfg.bcl_embed or arch.bcl_embed
    model = LongTailClassifier(
        Normalize(mean, std),
        body,
        classifier,
        (hidden, embed) if bcl_heads else None,
        views=max(views, bn_views),
        channels_last=cfg.channels_last,
        head_fp32=cfg.head_fp32,
    )
    if arch.cifar_init:
        for module in (model.classifier, *([model.head, model.head_fc] if bcl_heads else [])):
            module.apply(kaiming_init_)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build(cfg: ModelConfig, loss: Loss, *, num_classes: int, class_counts, mean, std) -> nn.Module:
    """The "classifier" kind's builder (trainer.models.MODELS): the loss's head, BCL's heads for its views,
    `model.bn_views`; with `model.init_from`, the stage-1 run's body, frozen (trainer/stage2.py)."""
    model = build_classifier(
        cfg, num_classes, loss.head, mean=mean, std=std, views=loss.num_views, bn_views=cfg.bn_views
    )
    if cfg.init_from:
        from trainer import stage2  # here: stage2 reads run folders through trainer.teacher, which imports us

        stage2.init_from(model, cfg.init_from, arch=cfg.arch, num_classes=num_classes)
    return model
