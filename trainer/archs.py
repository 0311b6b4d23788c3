"""Bodies by name: `arch_for(model.arch)`, the images-to-pooled-features network of every model kind.

An `Arch` builds a fresh body (a module with `feature_dim`) from the one setting a body reads,
`model.pretrained`, and carries the per-body defaults its heads use. `ARCHS` holds the fixed names; a name
`family:rest` goes to its family's maker (`FAMILIES`: "timm:<name>", any timm network, trainer/timm_body.py).
This module reads no config section, so `trainer.config` can check `model.arch` against it without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from trainer import timm_body
from trainer.resnet_cifar import ResNetCifar
from trainer.resnet_imagenet import PlacesResNet152, TorchvisionBody


@dataclass(frozen=True)
class Arch:
    build: Callable[[str], nn.Module]  # model.pretrained -> a fresh body with a `feature_dim` attribute
    cifar_init: bool  # True: kaiming-normal on the heads' Linear weights too (the CIFAR code's `apply`)
    bcl_hidden: int  # BCL MLP width; 0 = the feature dimension (upstream BCL's large-scale heads)
    bcl_embed: int
    reads_weights: bool = False  # False: `build` ignores model.pretrained, so setting it is an error


ARCHS: dict[str, Arch] = {
    "resnet32": Arch(lambda pretrained: ResNetCifar(5), True, 512, 128),
    "resnet20": Arch(lambda pretrained: ResNetCifar(3), True, 512, 128),
    "resnet56": Arch(lambda pretrained: ResNetCifar(9), True, 512, 128),
    "resnet8": Arch(lambda pretrained: ResNetCifar(1), True, 512, 128),
    # Narrow ResNet-8 (32-d features) for tests and the CPU demo.
    "resnet_tiny": Arch(lambda pretrained: ResNetCifar(1, (8, 16, 32)), True, 64, 32),
    "resnet18": Arch(lambda pretrained: TorchvisionBody("resnet18"), False, 0, 1024),
    "resnet50": Arch(lambda pretrained: TorchvisionBody("resnet50"), False, 0, 1024),
    "resnext50_32x4d": Arch(lambda pretrained: TorchvisionBody("resnext50_32x4d"), False, 0, 1024),
    "resnext101_32x8d": Arch(lambda pretrained: TorchvisionBody("resnext101_32x8d"), False, 0, 1024),  # GML
    "resnet152_places": Arch(PlacesResNet152, False, 0, 1024, reads_weights=True),
}


def _timm_arch(name: str) -> Arch:
    return Arch(lambda pretrained: timm_body.TimmBody(name, pretrained), False, 0, 1024, reads_weights=True)


# `family:rest` names: the family's check (a ValueError naming the key) and its Arch maker.
FAMILIES: dict[str, tuple[Callable[[str, str], None], Callable[[str], Arch]]] = {
    "timm": (timm_body.check_name, _timm_arch),
}


def check_arch(key: str, name: str) -> None:
    """A ValueError naming `key` unless `name` is a key of ARCHS or a valid `family:rest` name."""
    family, sep, rest = name.partition(":")
    if sep and family in FAMILIES:
        FAMILIES[family][0](key, rest)
    elif name not in ARCHS:
        valid = ", ".join(map(repr, [*ARCHS, *(f"{f}:<name>" for f in FAMILIES)]))
        raise ValueError(f"{key}: unknown value {name!r}; valid: {valid}")


def check_pretrained(name: str, pretrained: str) -> None:
    """A ValueError when `model.pretrained` names weights for an arch that would ignore them."""
    if pretrained and not arch_for(name).reads_weights:
        takes = ", ".join(
            [*(repr(k) for k, a in ARCHS.items() if a.reads_weights), *(f"'{f}:<name>'" for f in FAMILIES)]
        )
        raise ValueError(
            f"model.pretrained: {name!r} is built from scratch and reads no weights (only {takes} do); "
            "leave model.pretrained empty"
        )


def arch_for(name: str) -> Arch:
    """The Arch of a checked `model.arch`."""
    family, sep, rest = name.partition(":")
    return FAMILIES[family][1](rest) if sep and family in FAMILIES else ARCHS[name]
