"""Augmentation off the critical path: the lookup-table ops without an int64 copy of the batch, and the
whole augmentation compiled as one graph (no host syncs, no graph breaks) giving the eager output for the
same generator state."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pipelines.augment import OPS, apply_ops, build_batch_augment
from pipelines.augment.colour import LUT_OPS, flat_index, histograms, lookup, lut_ops
from pipelines.augment.ops import generator_as_default
from pipelines.augment.policies import OP_ID
from pipelines.augment.views import contrastive_view_augment

AUGMENTS = {
    "autoaugment_cifar10_cutout": lambda: build_batch_augment(auto_augment="cifar10", cutout=8),
    "randaugment_timm_cutout": lambda: build_batch_augment(
        auto_augment="randaugment", cutout=4, randaugment_m=10, magnitude_std=0.5, randaugment_style="timm"
    ),
    "contrastive_views_jitter_gray_blur": lambda: contrastive_view_augment(blur=True),
}


def _batch(n=6, size=12, layout=torch.channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return x.contiguous(memory_format=layout)


class _BigInt64Outputs(TorchDispatchMode):
    """Records every op output that is an int64 tensor at least as large as the batch."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.found = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.numel() >= self.numel:
                self.found.append(f"{func} -> {tuple(t.shape)}")
        return out


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_lut_ops_make_no_int64_copy_of_the_batch(layout):
    x = _batch(len(LUT_OPS), size=32, layout=layout)  # larger than the N x C x 256 tables
    op = torch.tensor([OP_ID[name] for name in sorted(LUT_OPS)])
    arg = torch.full((len(op),), 0.4)
    with _BigInt64Outputs(x.numel()) as probe:
        out = lut_ops(x, op, arg, LUT_OPS)
    assert probe.found == []
    assert flat_index(x).dtype == torch.int32
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert out.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_histograms_and_lookup_against_reference(layout):
    x = _batch(layout=layout)
    n, c = x.shape[:2]
    index = flat_index(x)
    expected = torch.stack(
        [
            torch.stack([torch.bincount(x[i, ch].flatten(), minlength=256) for ch in range(c)])
            for i in range(n)
        ]
    )
    assert torch.equal(histograms(index, n, c).long(), expected)
    lut = torch.randint(0, 256, (n, c, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    reference = torch.gather(lut, 2, x.reshape(n, c, -1).long()).view_as(x)
    assert torch.equal(lookup(lut, index, x), reference)


def test_lookup_of_a_non_contiguous_batch():
    x = _batch(size=16)[:, :, 2:14, 1:13]  # a crop: neither contiguous nor channels_last
    n, c = x.shape[:2]
    lut = torch.randint(0, 256, (n, c, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    reference = torch.gather(lut, 2, x.reshape(n, c, -1).long()).view_as(x)
    assert torch.equal(lookup(lut, flat_index(x), x), reference)


@pytest.mark.parametrize("name", sorted(AUGMENTS))
def test_generator_as_default_continues_the_generator(name):
    aug = AUGMENTS[name]()
    x = _batch()
    g_eager, g_lent = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    before = torch.default_generator.get_state()
    expected = aug(x, generator=g_eager)
    with generator_as_default(g_lent):
        got = aug(x)  # draws from the default generator
    assert torch.equal(got, expected)
    assert torch.equal(g_lent.get_state(), g_eager.get_state())  # the stream moved on exactly as eager
    assert torch.equal(torch.default_generator.get_state(), before)  # and the default one is untouched


@pytest.mark.slow  # a whole-policy trace: ~10-45 s on a loaded 2-core box
@pytest.mark.parametrize("name", sorted(AUGMENTS))
def test_compiled_augmentation_equals_eager_for_the_same_generator_state(name):
    aug = AUGMENTS[name]()
    x = _batch()
    compiled = torch.compile(aug, backend="aot_eager", fullgraph=True, dynamic=False)
    for seed in (0, 1):  # the second call reuses the compiled graph
        g_eager, g_comp = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        expected = aug(x, generator=g_eager)
        with generator_as_default(g_comp):
            got = compiled(x)
        assert torch.equal(got, expected)
        assert torch.equal(g_comp.get_state(), g_eager.get_state())
        assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(AUGMENTS))
def test_inductor_augmentation_matches_eager_on_cuda(name):
    aug = AUGMENTS[name]().cuda()
    x = _batch(n=16, size=32).cuda()
    with torch._inductor.config.patch(fallback_random=True):  # inductor draws with eager's RNG kernels
        compiled = torch.compile(aug, fullgraph=True, dynamic=False)
        g_eager = torch.Generator(device="cuda").manual_seed(0)
        g_comp = torch.Generator(device="cuda").manual_seed(0)
        expected = aug(x, generator=g_eager)
        with generator_as_default(g_comp):
            got = compiled(x)
    diff = (got.int() - expected.int()).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.99  # float fusion may move a rounding
    assert torch.equal(g_comp.get_state(), g_eager.get_state())


@pytest.mark.slow
def test_autocontrast_compiled_with_inductor_on_contiguous_uint8():
    """Inductor's CPU min-reduction on contiguous uint8 returns 0 (torch 2.14.1): AutoContrast avoids it."""
    x = torch.randint(60, 200, (2, 3, 8, 8), dtype=torch.uint8)
    ops = torch.full((2,), OP_ID["AutoContrast"])
    args = torch.zeros(2)
    present = frozenset({"AutoContrast"})
    compiled = torch.compile(lambda t: lut_ops(t, ops, args, present), backend="inductor", dynamic=False)
    eager = lut_ops(x, ops, args, present)
    assert eager.amin() == 0 and eager.amax() >= 254  # stretched to the full range (torchvision truncates)
    assert torch.equal(compiled(x), eager)


@pytest.mark.slow  # inductor compiles take tens of seconds on a small CPU
def test_compiled_ops_match_eager():
    g = torch.Generator().manual_seed(0)
    n = 2 * len(OPS)
    x = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    op = torch.arange(n) % len(OPS)
    arg = torch.where(op == OP_ID["Posterize"], 4.0, torch.where(op == OP_ID["Solarize"], 128.0, 0.4))
    fill = torch.tensor([128.0, 128.0, 128.0])
    eager = apply_ops(x, op, arg, OPS, fill)
    compiled = torch.compile(apply_ops, fullgraph=True, dynamic=False)(x, op, arg, OPS, fill)
    diff = (eager.int() - compiled.int()).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.99


@pytest.mark.slow
def test_whole_augmentation_compiles_fullgraph():
    aug = build_batch_augment(auto_augment="cifar10", cutout=8)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    # The global RNG inside a compiled step (no generator argument); static shapes, as the trainer compiles.
    out = torch.compile(aug, fullgraph=True, dynamic=False)(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
