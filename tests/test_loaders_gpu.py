"""make_loader on CUDA (`make test-gpu`): FFCV's ToDevice path and DALI's nvJPEG (`mixed`) decoding."""

from __future__ import annotations

import pytest
import torch

from pipelines import DataConfig, make_loader

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


@pytest.mark.parametrize("backend", ["ffcv", "dali"])
@pytest.mark.parametrize("train", [True, False])
def test_batches_land_on_the_gpu(demo_converted, backend, train):
    device = torch.device("cuda", torch.cuda.current_device())
    cfg = DataConfig(
        backend=backend,
        dir=str(demo_converted),
        batch_size=16,
        resolution=32,
        num_workers=2,
        auto_augment="cifar10",
        cutout=8,
    )
    split = "train" if train else "eval"
    with make_loader(cfg, split, views=3 if train else 1, device=device) as ld:
        seen = 0
        for images, labels in ld:
            n = labels.shape[0]
            assert images.device == device == labels.device
            assert images.dtype == torch.uint8 and labels.dtype == torch.int64
            assert images.shape == ((3 if train else 1) * n, 3, 32, 32)
            assert images.is_contiguous(memory_format=torch.channels_last)
            seen += n
        torch.cuda.synchronize()
        assert seen == (len(ld) * 16 if train else ld.meta.num_samples)
