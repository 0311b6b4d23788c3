"""Cutout boxes and the step's Normalize."""

from __future__ import annotations

import pytest
import torch

from pipelines.augment import Cutout, Normalize, cutout


def boxes(mask: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of each sample's zeroed rectangle, asserting it is one rectangle."""
    out = []
    for m in mask:
        rows, cols = m.any(dim=1).nonzero().flatten(), m.any(dim=0).nonzero().flatten()
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        assert m[top:bottom, left:right].all() and int(m.sum()) == (bottom - top) * (right - left)
        out.append((top, bottom, left, right))
    return out


@pytest.mark.parametrize("size", [16, 5])
def test_cutout_box_size_and_clipping(size):
    h, w = 32, 24
    x = torch.full((400, 3, h, w), 255, dtype=torch.uint8)
    out = cutout(x, size, torch.Generator().manual_seed(0))
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])  # all channels, fill 0
    assert bool((out[~zero] == 255).all())
    clipped = 0
    for top, bottom, left, right in boxes(zero[:, 0]):
        for lo, hi, extent in ((top, bottom, h), (left, right, w)):
            assert 0 < hi - lo <= size
            if lo > 0 and hi < extent:
                assert hi - lo == size  # a box away from the borders is the full square
            clipped += hi - lo < size
    assert clipped > 20  # centres are uniform over the whole image, so boxes near the edges are cut short


def test_cutout_centres_cover_the_image():
    x = torch.full((2000, 1, 8, 8), 255, dtype=torch.uint8)
    zero = cutout(x, 2, torch.Generator().manual_seed(1))[:, 0] == 0
    hits = zero.float().mean(dim=0)  # every pixel gets cut sometimes, corners about a quarter as often
    assert hits.min() > 0.01
    assert abs(float(hits[3:5, 3:5].mean()) - 4 / 64) < 0.02


def test_cutout_module_and_zero_size():
    x = torch.full((4, 3, 8, 8), 9, dtype=torch.uint8)
    assert Cutout(0)(x) is x
    assert int((Cutout(4)(x, generator=torch.Generator().manual_seed(0)) == 0).sum()) > 0
    with pytest.raises(ValueError):
        Cutout(-1)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_normalize(layout):
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    x = torch.randint(0, 256, (4, 3, 5, 7), dtype=torch.uint8).contiguous(memory_format=layout)
    norm = Normalize(mean, std)
    out = norm(x)
    ref = (x.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=layout)
    assert torch.allclose(out.double(), ref, atol=1e-5)
    assert dict(norm.state_dict()) == {}  # statistics come from the config, not from checkpoints
    assert norm.to(torch.device("cpu")).scale.device.type == "cpu"
    with pytest.raises(ValueError):
        Normalize((0.5,), (0.5, 0.5))
