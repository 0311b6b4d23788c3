"""SGD whose learning rate is a 0-dim device tensor, and its parameter groups.

Not `torch.optim.SGD(lr=tensor)`: its foreach path calls `.item()` on `-lr` outside torch.compile (a host
sync, an error under capture), and the fused tensor-lr kernel is CUDA-only. Here the lr tensor is a plain
foreach operand, so eager, compiled and captured steps all run it and `lr.fill_(v)` needs no recompile.
Maths: torch's SGD with dampening 0: d = g + wd*p; b = m*b + d; d = d + m*b (nesterov) or b; p -= lr*d.
Momentum buffers start as zeros (0*m + d equals torch's first-step clone), so a graph can be captured
over them before any step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from trainer.config import OptimConfig

# Parameters of these modules get no weight decay when `decay_norm_and_bias` is False (biases of any module
# are excluded too). Chosen by type, never by a name substring such as "bn".
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict[str, Any]]:
    """Trainable parameters split into a decayed and a non-decayed group (frozen ones are left out).

    A parameter carrying the attribute `no_weight_decay = True` (e.g. GML's learnable temperature) is never
    decayed, whatever `decay_norm_and_bias` says: an explicit per-parameter opt-out, not a name match. The
    attribute lives on the Parameter object, so it survives `.to()` and `load_state_dict` (not `deepcopy`).
    """
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            exempt = isinstance(module, NORM_TYPES) or (name == "bias" and p is getattr(module, "bias", None))
            opted_out = getattr(p, "no_weight_decay", False)
            (no_decay if opted_out or (exempt and not decay_norm_and_bias) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class SGD(torch.optim.Optimizer):
    """SGD + momentum (+ nesterov) + L2 weight decay with `lr` a 0-dim tensor shared by all groups."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: Tensor,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        if not isinstance(lr, Tensor) or lr.dim() != 0:
            raise TypeError("SGD: lr must be a 0-dim tensor on the parameters' device")
        if nesterov and momentum <= 0:
            raise ValueError("SGD: nesterov needs momentum > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay))
        self.lr = lr
        for group in self.param_groups:
            group["lr"] = lr
            if group["momentum"]:
                for p in group["params"]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("SGD: closures are not supported")
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            wd, m = group["weight_decay"], group["momentum"]
            if wd:
                grads = torch._foreach_add(grads, params, alpha=wd)
            if m:
                bufs = [self.state[p]["momentum_buffer"] for p in params]
                torch._foreach_mul_(bufs, m)
                torch._foreach_add_(bufs, grads)
                grads = torch._foreach_add(grads, bufs, alpha=m) if group["nesterov"] else bufs
            torch._foreach_sub_(params, torch._foreach_mul(grads, group["lr"]))

    def zero_grad_(self) -> None:
        """Zero existing gradients in place (keeps their memory: what a captured graph needs)."""
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            torch._foreach_zero_(grads)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Torch's loading, but every tensor keeps its identity: the saved lr and momentum buffers are copied
        into the tensors this optimizer already holds. A captured step graph reads those addresses, so it
        stays valid after a checkpoint load (torch's loading would put new tensors in their place)."""
        buffers = {
            id(p): self.state[p]["momentum_buffer"] for p in self.state if "momentum_buffer" in self.state[p]
        }
        saved = state_dict["param_groups"][0].get("lr") if state_dict.get("param_groups") else None
        super().load_state_dict(state_dict)
        with torch.no_grad():
            if saved is not None:
                self.lr.copy_(torch.as_tensor(saved, dtype=self.lr.dtype))
            for group in self.param_groups:
                group["lr"] = self.lr
                for p in group["params"]:
                    original = buffers.get(id(p))
                    if original is not None and "momentum_buffer" in self.state[p]:
                        original.copy_(self.state[p]["momentum_buffer"])
                        self.state[p]["momentum_buffer"] = original


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: Tensor | None = None) -> SGD:
    """SGD over `model`'s trainable parameters; `lr` (created as `cfg.lr` on the parameters' device when
    None) is the tensor the loop updates in place each step: `optimizer.lr.fill_(value)`."""
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    if not any(g["params"] for g in groups):
        raise ValueError("build_optimizer: the model has no trainable parameters")
    if lr is None:
        device = groups[0]["params"][0].device if groups[0]["params"] else groups[1]["params"][0].device
        lr = torch.tensor(float(cfg.lr), device=device)
    return SGD(groups, lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
