"""ImageNet-style bodies: torchvision ResNets without their `fc`, and FBL's frozen Places-LT ResNet-152.

torchvision's own initialisation is what both papers use (spec/losses.md §6.5): kaiming-normal fan_out on
convolutions, BatchNorm weight 1 and bias 0, no zero-init of the last BN of each block.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck


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


def _load_state_dict(path: str, arch: str) -> dict[str, Tensor]:
    if not path:
        raise ValueError(
            f"model.pretrained is empty: arch {arch} needs the path of an ImageNet-pretrained "
            f"torchvision ResNet-152 state_dict (e.g. resnet152-b121ed2d.pth)"
        )
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"model.pretrained: {file} not found (arch {arch} needs an ImageNet-pretrained "
            f"torchvision ResNet-152 state_dict)"
        )
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"model.pretrained: {file} does not hold a state_dict (got {type(state).__name__})")
    return state


class PlacesResNet152(nn.Module):
    """FBL's `resnet152_p` + `Block` (spec/losses.md §6.4).

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
        except RuntimeError as exc:
            raise ValueError(
                f"model.pretrained: {pretrained} is not a torchvision ResNet-152 state_dict: {exc}"
            ) from exc
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
