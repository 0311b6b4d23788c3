"""One op per sample, the whole batch in one pass: the dispatcher every policy builds on.

`apply_ops(x, op, arg, present, fill)` applies to sample i the op `OPS[op[i]]` with argument `arg[i]`, one
pass per family of ops present. Nothing here reads a tensor value on the host, so the pass can live inside a
compiled or CUDA-graph-captured step; `generator_as_default` keeps a loader's per-epoch random stream there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

from .colour import BLEND_OPS, LUT_OPS, blend_ops, lut_ops
from .geometric import AFFINE_OPS, affine_ops
from .policies import OP_ID, OPS

IDENTITY = OP_ID["Identity"]


def check_ops(names: Iterable[str]) -> frozenset[str]:
    names = frozenset(names)
    unknown = names - frozenset(OPS)
    if unknown:
        raise ValueError(f"unknown augmentation op(s) {sorted(unknown)}; choose from {list(OPS)}")
    return names


def apply_ops(
    x: torch.Tensor, op: torch.Tensor, arg: torch.Tensor, present: Iterable[str], fill: torch.Tensor
) -> torch.Tensor:
    """uint8 N x C x H x W -> uint8, sample i transformed by op `op[i]` (int64, N) with `arg[i]` (N).

    `arg` means what the comment in `policies` before the magnitude functions says. Three families (lookup
    tables, blends: `colour`; geometric: one `grid_sample`) each run once over the batch, the identity for
    samples of another family. `present` is the static set of op names a stage can draw; families with no
    op in it are skipped, so a stage that only draws colour ops never resamples the image.
    """
    present = check_ops(present)
    if present & LUT_OPS:
        x = lut_ops(x, op, arg, present)
    if present & BLEND_OPS:
        x = blend_ops(x, op, arg, present)
    if present & AFFINE_OPS:
        x = affine_ops(x, op, arg, present, fill.to(x.device, torch.float32))
    return x


def by_op(op: torch.Tensor, names: Iterable[str], value_of, default: torch.Tensor) -> torch.Tensor:
    """Per element, `value_of(name)` where `op` is that op's id, else `default` (a static loop over names)."""
    out = default
    for name in sorted(frozenset(names)):
        out = torch.where(op == OP_ID[name], value_of(name), out)
    return out


def fill_tensor(fill: float | Iterable[float], channels: int = 3) -> torch.Tensor:
    """Fill colour as a float32 tensor of one value per channel (a scalar is repeated)."""
    values = [float(fill)] * channels if isinstance(fill, (int, float)) else [float(f) for f in fill]
    if len(values) != channels:
        raise ValueError(f"fill needs 1 or {channels} values, got {len(values)}")
    return torch.tensor(values, dtype=torch.float32)


def coin(shape: tuple[int, ...], p: float | torch.Tensor, device, generator) -> torch.Tensor:
    """Bernoulli(p) draws, True w.p. p, with torchvision's comparison (`rand <= p`)."""
    return torch.rand(shape, device=device, generator=generator) <= p


def _default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cuda":
        return torch.cuda.default_generators[
            device.index if device.index is not None else torch.cuda.current_device()
        ]
    if device.type == "cpu":
        return torch.default_generator
    raise ValueError(f"generator_as_default: no default generator known for {device}")


@contextlib.contextmanager
def generator_as_default(generator: torch.Generator | None) -> Iterator[None]:
    """Within the block the default generator of `generator`'s device continues `generator`'s stream;
    afterwards `generator` holds the advanced state and the default generator its own again. Draws in the
    block are those `generator` would have made (eager), and as reproducible (compiled). State reads are
    host-side (seed and offset on CUDA): no device sync. None: a no-op.

    A compiled augmentation cannot take a `torch.Generator` argument (Dynamo does not trace one), so it
    draws from the default generator, lent `g`'s state here:

        compiled = torch.compile(aug, fullgraph=True, dynamic=False)
        with generator_as_default(g):
            images = compiled(images)
    """
    if generator is None:
        yield
        return
    default = _default_generator(generator.device)
    saved = default.get_state()
    default.set_state(generator.get_state())
    try:
        yield
    finally:
        generator.set_state(default.get_state())
        default.set_state(saved)
