"""Models: output shapes per arch, initialisation, BCL heads, the frozen Places-LT body, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from losses import LOSSES, CosineClassifier, ModelOutput, build_loss
from pipelines.augment import Normalize
from trainer.config import ModelConfig, OptimConfig
from trainer.models import ARCHS, MODELS, LongTailClassifier, build_classifier, build_model
from trainer.optim import build_optimizer
from trainer.resnet_cifar import ShortcutA

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _images(n: int, size: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)


def _build(arch: str, num_classes: int = 10, head: str = "linear", **kw) -> nn.Module:
    return build_classifier(
        ModelConfig(arch=arch, **kw.pop("cfg", {})), num_classes, head, mean=MEAN, std=STD, **kw
    )


@pytest.mark.parametrize(
    "arch,dim", [("resnet32", 64), ("resnet20", 64), ("resnet56", 64), ("resnet8", 64), ("resnet_tiny", 32)]
)
@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_cifar_family_shapes(arch, dim, head):
    model = _build(arch, 7, head)
    out = model(_images(4, 16))
    assert isinstance(out, ModelOutput)
    assert out.features.shape == (4, dim) and out.logits.shape == (4, 7)
    assert out.embeddings is None and out.centers is None
    assert out.logits.dtype == torch.float32
    assert isinstance(model.normalize, Normalize)
    assert isinstance(model.classifier, CosineClassifier if head == "cosine" else nn.Linear)
    if head == "cosine":
        assert out.logits.abs().max() <= 1 + 1e-5


@pytest.mark.parametrize(
    "arch,dim",
    [("resnet18", 512), ("resnet50", 2048), ("resnext50_32x4d", 2048), ("resnext101_32x8d", 2048)],
)
def test_torchvision_bodies_shapes(arch, dim):
    model = _build(arch, 5, "cosine")
    out = model(_images(2, 32))
    assert out.features.shape == (2, dim) and out.logits.shape == (2, 5)


def test_resnet32_layout_and_init():
    model = _build("resnet32", 10, "linear", cfg={"channels_last": False})
    # The classic CIFAR-10 ResNet-32: 0.46 M parameters, option-A shortcuts without parameters.
    assert sum(p.numel() for p in model.parameters()) == 464_154
    shortcuts = [m for m in model.modules() if isinstance(m, ShortcutA)]
    assert len(shortcuts) == 2 and all(not list(s.parameters()) for s in shortcuts)
    # kaiming-normal (fan_in) on the linear head too: std sqrt(2/64), not nn.Linear's 1/sqrt(3*64)
    assert model.classifier.weight.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.2)
    conv = model.body.layer3[0].conv2.weight
    assert conv.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.1)


def test_torchvision_init_no_zero_init():
    body = _build("resnet50", 3).body.net
    last_bns = [b.bn3.weight for layer in (body.layer1, body.layer4) for b in layer]
    assert all(torch.all(w == 1) for w in last_bns)
    conv = body.layer4[0].conv2.weight  # fan_out = 512 * 9
    assert conv.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.1)


def test_channels_last_and_normalise_first():
    model = _build("resnet_tiny", 3)
    assert model.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.full((2, 3, 8, 8), 128, dtype=torch.uint8)
    y = model.normalize(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(y, torch.full_like(y, (128 / 255 - 0.5) / 0.25), atol=1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_heads_stay_fp32_under_bf16_autocast():
    model = _build("resnet_tiny", 3, "cosine")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_images(2, 16))
    assert out.logits.dtype == torch.float32 and out.features.dtype == torch.float32


@pytest.mark.parametrize("head", ["cosine", "linear"])
def test_bcl_heads(head):
    model = _build("resnet_tiny", 6, head, views=3)
    assert isinstance(model.head[1], nn.BatchNorm1d) and model.head[0].out_features == 64
    b = 4
    out = model(_images(3 * b, 16))
    assert out.logits.shape == (b, 6) and out.features.shape == (b, 32)
    assert out.embeddings.shape == (2 * b, 32) and out.centers.shape == (6, 32)
    assert torch.allclose(out.embeddings.norm(dim=1), torch.ones(2 * b), atol=1e-5)
    assert torch.allclose(out.centers.norm(dim=1), torch.ones(6), atol=1e-5)
    # the centres come from the raw class vectors: their gradient reaches the classifier weight
    out.centers.sum().backward()
    assert model.classifier.weight.grad is not None and model.classifier.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="3 views"):
        model(_images(4, 16))
    model.eval()
    out = model(_images(5, 16))
    assert out.logits.shape == (5, 6) and out.embeddings is None and out.centers is None


def test_bcl_heads_sizes_large_and_override():
    model = _build("resnet18", 4, "cosine", views=3)
    assert model.head[0].out_features == 512 and model.head[3].out_features == 1024  # hidden = d
    model = _build("resnet_tiny", 4, "cosine", views=3, cfg={"bcl_hidden": 16, "bcl_embed": 8})
    assert model.head_fc[0].out_features == 16 and model.head_fc[3].out_features == 8


def test_unknown_arch_and_head():
    with pytest.raises(ValueError, match="model.arch: unknown value 'resnet33'; valid: 'resnet32'"):
        _build("resnet33")
    with pytest.raises(ValueError, match="valid: linear, cosine"):
        _build("resnet8", head="normed")
    assert {
        "resnet32",
        "resnet8",
        "resnet_tiny",
        "resnet18",
        "resnet50",
        "resnext50_32x4d",
        "resnext101_32x8d",
        "resnet152_places",
    } <= set(ARCHS)


def test_places_needs_pretrained_file(tmp_path):
    with pytest.raises(ValueError, match="model.pretrained is empty"):
        _build("resnet152_places")
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        _build("resnet152_places", cfg={"pretrained": str(missing)})
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision ResNet-152"):
        _build("resnet152_places", cfg={"pretrained": str(bad)})


def test_places_frozen_body(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet152(weights=None)
    path = tmp_path / "resnet152.pth"
    torch.save(reference.state_dict(), path)
    model = _build("resnet152_places", 365, "linear", cfg={"pretrained": str(path)})
    frozen, block = model.body.frozen, model.body.block
    assert len(frozen[-1]) == 2  # layer4 cut to its first two blocks
    assert torch.equal(frozen[-1][1].conv3.weight, reference.layer4[1].conv3.weight)
    assert block.conv1.in_channels == 2048 and block.conv1.out_channels == 512
    assert block.conv3.out_channels == 2048
    model.train()
    assert not frozen.training and block.training
    running = frozen[1].running_mean.clone()
    out = model(_images(2, 64))
    assert out.features.shape == (2, 2048) and out.logits.shape == (2, 365)
    out.logits.sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())
    assert block.conv1.weight.grad is not None
    assert torch.equal(frozen[1].running_mean, running)  # eval-mode BN: statistics untouched
    optimizer = build_optimizer(model, OptimConfig())
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt for p in frozen.parameters())
    assert len(in_opt) == sum(1 for p in model.parameters() if p.requires_grad)


def test_pretrained_weights_by_name_come_from_torchvisions_cache(tmp_path, monkeypatch):
    """`torchvision:<Weights>.<NAME>` loads through torchvision's download cache (so it works offline once the
    file is there) and says how to pass a file when it cannot be fetched."""
    from trainer.resnet_imagenet import _load_state_dict

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    with pytest.raises(
        FileNotFoundError, match=r"cannot fetch torchvision:ResNet18.*--model.pretrained=/path/to/"
    ):
        _load_state_dict("torchvision:ResNet18_Weights.IMAGENET1K_V1", "resnet152_places")
    cached.parent.mkdir(parents=True, exist_ok=True)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(reference, cached)
    state = _load_state_dict("torchvision:ResNet18_Weights.IMAGENET1K_V1", "resnet152_places")
    assert state.keys() == reference.keys() and torch.equal(state["fc.weight"], reference["fc.weight"])
    with pytest.raises(ValueError, match="torchvision:Resnet18_Weights.X is not a torchvision weights name"):
        _load_state_dict("torchvision:Resnet18_Weights.X", "resnet152_places")


def test_every_loss_names_a_registered_model():
    """`build_model` dispatches on the loss's `model` class attribute: each must be a key of MODELS."""
    for name, cls in LOSSES.items():
        assert cls.model in MODELS, name
    assert {cls.model for cls in LOSSES.values()} == set(MODELS)  # no builder without a loss
    where = dict(num_classes=5, class_counts=[9, 7, 5, 3, 1], mean=MEAN, std=STD)
    model = build_model(
        ModelConfig(arch="resnet_tiny"), build_loss("ldam_drw", where["class_counts"]), **where
    )
    assert isinstance(model, LongTailClassifier) and isinstance(model.classifier, CosineClassifier)
    assert not model.bcl


def test_every_model_kinds_shape_keys_are_model_keys():
    """A kind's `shape_keys` are [model] keys (a resume compares them by name: a typo fails only then)."""
    keys = set(ModelConfig.__dataclass_fields__)
    for name, kind in MODELS.items():
        assert kind.shape_keys and set(kind.shape_keys) <= keys - {"arch"}, name


def test_a_classifier_takes_the_labels_and_ignores_them():
    """Every model's forward is forward(images, labels=None): the step always passes the labels."""
    model = _build("resnet_tiny", 4, "cosine", views=3).eval()
    images, labels = _images(6, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    a, b = model(images), model(images, labels)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.features, b.features)
