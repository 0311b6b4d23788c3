"""ImageNet-style bodies: torchvision ResNets without their `fc`, and FBL's frozen Places-LT ResNet-152.

torchvision's own initialisation is what both papers use: kaiming-normal fan_out on
convolutions, BatchNorm weight 1 and bias 0, no zero-init of the last BN of each block.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from trainer.torchload import load_reason


class TorchvisionBody(nn.Module):
    """A torchvision ResNet up to the global average pool; forward returns [N, feature_dim]."""

    def __init__(self, name: str) -> None:
        super().__init__()
        net = getattr(torchvision.models, name)(weights=None, zero_init_residual=False)
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()  # torchvision's forward flattens after avgpool, then applies fc
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


TORCHVISION_PREFIX = "torchvision:"


class PretrainedError(ValueError):
    """`model.pretrained` names no usable weights (an unknown name, a file that is no state_dict, or one of
    another architecture); the one-line message names the key and the file."""


def _torchvision_weights(name: str) -> dict[str, Tensor]:
    """`ResNet152_Weights.IMAGENET1K_V1` through torchvision's weights API and its download cache: works
    offline once the file is in the cache, and says how to pass a file when it cannot be fetched."""
    try:
        weights = torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError) as exc:
        raise PretrainedError(
            f"model.pretrained: {TORCHVISION_PREFIX}{name} is not a torchvision weights name "
            f"(e.g. torchvision:ResNet152_Weights.IMAGENET1K_V1): {load_reason(exc)}"
        ) from None
    try:
        return weights.get_state_dict(progress=False)
    except OSError as exc:  # URLError and friends: no network, a proxy, a full cache folder
        file = weights.url.rsplit("/", 1)[-1]
        raise FileNotFoundError(
            f"model.pretrained: cannot fetch {TORCHVISION_PREFIX}{name} ({exc}); without network, download "
            f"{weights.url} elsewhere and pass the file: --model.pretrained=/path/to/{file}"
        ) from None


def _load_state_dict(source: str, arch: str) -> dict[str, Tensor]:
    """A state_dict from a file, or from torchvision's weights by name (`torchvision:<Weights>.<NAME>`)."""
    if not source:
        raise PretrainedError(
            f"model.pretrained is empty: arch {arch} needs ImageNet-pretrained torchvision ResNet-152 "
            f"weights: {TORCHVISION_PREFIX}ResNet152_Weights.IMAGENET1K_V1 or a file (resnet152-b121ed2d.pth)"
        )
    if source.startswith(TORCHVISION_PREFIX):
        return _torchvision_weights(source[len(TORCHVISION_PREFIX) :])
    file = Path(source)
    if not file.is_file():
        raise FileNotFoundError(
            f"model.pretrained: {file} not found (arch {arch} needs an ImageNet-pretrained "
            f"torchvision ResNet-152 state_dict)"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a text file, a damaged one, a pickle weights_only refuses
        raise PretrainedError(
            f"model.pretrained: {file} is not a PyTorch weights file torch.load reads with weights_only "
            f"(a state_dict of tensors): {load_reason(exc)}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PretrainedError(
            f"model.pretrained: {file} does not hold a state_dict (got {type(state).__name__})"
        )
    return state


def _mismatch(net: nn.Module, state: dict[str, Tensor]) -> str:
    """What differs between a state_dict and the network it was meant for, in one line."""
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    shapes = [k for k in want if k in state and tuple(getattr(state[k], "shape", ())) != want[k]]
    parts = [
        f"{len(keys)} {what} (first {keys[0]!r})"
        for what, keys in (("missing keys", missing), ("unexpected keys", extra), ("shapes differ", shapes))
        if keys
    ]
    return "; ".join(parts) or "the weights do not load"


class PlacesResNet152(nn.Module):
    """FBL's `resnet152_p` + `Block` (the FBL release's Places-LT body).

    `frozen`: an ImageNet-pretrained ResNet-152 with layer4 cut to its first 2 blocks; no parameter needs a
    gradient, it stays in eval mode whatever `train()` says (BN statistics fixed), and it runs under no_grad.
    `block`: a new trainable Bottleneck 2048->512->2048 with PyTorch's default init (as in FBL's `Block`),
    then the average pool gives the 2048-d features.
    """

    def __init__(self, pretrained: str) -> None:
        super().__init__()
        net = torchvision.models.resnet152(weights=None)
        state = _load_state_dict(pretrained, "resnet152_places")
        try:
            net.load_state_dict(state)
        except RuntimeError:
            raise PretrainedError(
                f"model.pretrained: {pretrained} is not a torchvision ResNet-152 state_dict: "
                f"{_mismatch(net, state)}"
            ) from None
        self.frozen = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4[:2]
        )
        self.frozen.requires_grad_(False)
        self.frozen.eval()
        self.block = Bottleneck(2048, 512)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 2048

    def train(self, mode: bool = True) -> PlacesResNet152:
        super().train(mode)
        self.frozen.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            x = self.frozen(x)
        return torch.flatten(self.pool(self.block(x)), 1)
