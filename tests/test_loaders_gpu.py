"""make_loader on CUDA (`make test-gpu`): FFCV's ToDevice path and DALI's nvJPEG (`mixed`) decoding."""

from __future__ import annotations

import pytest
import torch

from pipelines import DataConfig, make_loader
from trainer.lead import HostLead

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


def test_dali_batches_stay_whole_while_the_gpu_lags(demo_converted):
    """DALI's outputs are zero-copy: a batch the host has moved past must not be recycled while a queued
    step still reads it. A slow step (a spinning kernel, then a position-weighted checksum of the batch) runs
    behind the host by the loops' full lead; every checksum must equal that of the same batch copied to the
    host with nothing queued."""
    device = torch.device("cuda", torch.cuda.current_device())
    cfg = DataConfig(backend="dali", dir=str(demo_converted), batch_size=8, resolution=32, num_workers=2)
    weights = torch.randint(1, 1 << 20, (3, 32, 32), generator=torch.Generator().manual_seed(0))
    with make_loader(cfg, "eval", device=device) as ld:
        expected = []
        for images, _ in ld:  # the reference: each batch on the host before the next is fetched
            expected.append(int((images.cpu().to(torch.int64) * weights).sum()))
        sums = torch.zeros(len(ld), dtype=torch.int64, device=device)
        w, lead = weights.to(device), HostLead()
        for k, (images, _) in enumerate(ld):
            lead.wait()
            torch.cuda._sleep(20_000_000)  # ~10 ms: the GPU lags, the host fetches the next batches
            sums[k] = (images.to(torch.int64) * w).sum()
            lead.record()
        assert lead.waits > 0  # the host did run ahead by the full lead
        assert sums.tolist() == expected
