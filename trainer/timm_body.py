"""Any timm network as a body: `model.arch = "timm:<name>"` -> `timm.create_model(name, num_classes=0)`.

timm is an optional extra (`pip install fastlt[timm]`; `make setup` installs it). The body is the network
without its classifier (timm's `num_classes=0` gives the pooled features, `num_features` wide), so every
fastlt head (linear, cosine, BCL's, GML's) sits on it unchanged. Weights (`model.pretrained`): "" random
init; a local file (a timm / PyTorch state_dict or safetensors), loaded through timm's own pretrained path
so its filters apply (ViT position embeddings resized, the classifier dropped); or `timm:<name>[.<tag>]`,
read from the local Hugging Face / timm cache (or fetched, when the machine is online). Invariant: nothing
here runs unless a recipe names a timm arch, so fastlt without timm works for every other arch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from torch import Tensor, nn

PREFIX = "timm:"
INSTALL = "pip install 'fastlt[timm]' (or pip install timm)"


def available() -> bool:
    return importlib.util.find_spec("timm") is not None


def _timm() -> Any:
    if not available():
        raise ValueError(f"model.arch: timm archs need the timm package: {INSTALL}")
    import timm

    return timm


def check_name(key: str, name: str) -> None:
    """A ValueError naming `key` when timm is missing or has no model called `name` (a few close names)."""
    timm = _timm()
    if not name or not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5] if name else []
        hint = f"; close: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ValueError(f"{key}: timm has no model {name!r}{hint}")


class TimmBody(nn.Module):
    """A timm network without its classifier; forward returns its pooled features [N, num_features]."""

    def __init__(self, name: str, pretrained: str = "") -> None:
        super().__init__()
        timm = _timm()
        kwargs: dict[str, Any] = {"num_classes": 0}
        source = name
        if pretrained.startswith(PREFIX):
            source = pretrained[len(PREFIX) :]
            if source.split(".", 1)[0] != name:
                raise ValueError(
                    f"model.pretrained: {pretrained} holds weights of {source.split('.', 1)[0]}, but "
                    f"model.arch is {PREFIX}{name}"
                )
            kwargs["pretrained"] = True
        elif pretrained:
            file = Path(pretrained)
            if not file.is_file():
                raise FileNotFoundError(f"model.pretrained: {file} not found (a {name} weights file)")
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(file)})
        try:
            self.net = timm.create_model(source, **kwargs)
        except (OSError, RuntimeError) as exc:  # no cache entry and no network; a file that does not fit
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FileNotFoundError(
                f"model.pretrained: cannot load {pretrained} for {PREFIX}{name} ({first}); offline, download "
                f"the weights file elsewhere and pass it: --model.pretrained=/path/to/model.safetensors"
            ) from None
        self.feature_dim = int(self.net.num_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
