"""The step's first op: uint8 images -> normalised float32, channels_last kept."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """`(x / 255 - mean) / std` per channel for uint8 input (mean, std on the 0..1 scale).

    Folded into one multiply-add, `x * (1 / (255 std)) - mean / std`, that a compiled step fuses with the
    uint8 -> float conversion. The constants are registered buffers, so `.to()` moves them, but not
    persistent ones: the statistics come from the config, and a model's state_dict stays loadable into a
    plain torchvision network. Element-wise ops keep the input's memory format (channels_last stays).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"Normalize: mean has {len(mean)} values, std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"Normalize: std must be positive, got {tuple(std)}")
        mean_t = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
        self.register_buffer("mean", mean_t.float(), persistent=False)
        self.register_buffer("std", std_t.float(), persistent=False)
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).float(), persistent=False)
        self.register_buffer("shift", (-mean_t / std_t).float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x.to(torch.float32), self.scale)

    def extra_repr(self) -> str:
        mean = tuple(round(v, 4) for v in self.mean.flatten().tolist())
        std = tuple(round(v, 4) for v in self.std.flatten().tolist())
        return f"mean={mean}, std={std}"
