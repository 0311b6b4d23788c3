"""The cosine ("normed", `--use_norm`) classifier: unit-norm class vectors, no bias, raw cosines."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CosineClassifier(nn.Module):
    """`cos θ[i, c] = normalize(f_i) · normalize(w_c)`, with `weight` laid out [in_features, num_classes].

    The layout is the released code's (the transpose of `nn.Linear.weight`): each column is one class
    vector. The scale `s` is not applied here; the loss applies it, and evaluation takes the argmax of the
    raw cosines. BCL's `head_fc` reads the class vectors as `weight.T`.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 1:
            raise ValueError(
                f"CosineClassifier: in_features and num_classes must be >= 1, "
                f"got {in_features} and {num_classes}"
            )
        self.in_features = in_features
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(in_features, num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # U(-1, 1), then every column scaled to unit norm (the code's renorm(1e-5) * 1e5 does exactly this).
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.div_(self.weight.norm(dim=0, keepdim=True).clamp_min(1e-12))

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(features, dim=1) @ F.normalize(self.weight, dim=0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"
