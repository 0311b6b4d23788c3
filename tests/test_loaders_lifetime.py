"""What a loader owes the process it runs in, beyond its batches (CPU, real DALI and FFCV pipelines): DALI's
zero-copy output batches stay referenced exactly as long as the loops' host lead lets a queued step read
them, and FFCV leaves torch's CPU thread count as the trainer set it."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from pipelines import DataConfig, make_loader
from pipelines.config import MAX_LEAD
from pipelines.dali_backend import KEEP_OUTPUTS

# numba prints a harmless KeyError from a finalizer of FFCV's compiled functions.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _config(root, backend: str) -> DataConfig:
    return DataConfig(backend=backend, dir=str(root), resolution=24, batch_size=8, num_workers=2)


def test_dali_keeps_the_last_batches_it_handed_out_for_the_host_lead(demo_converted):
    """The backend holds batch i's DALI outputs until it has handed out batch i + MAX_LEAD + 1: the batch in
    the consumer's hands plus the MAX_LEAD a queued step may still read. Not shorter (a torn batch), not
    longer (DALI's prefetched buffers are the memory bound)."""
    assert KEEP_OUTPUTS == MAX_LEAD + 1
    with make_loader(_config(demo_converted, "dali"), "eval", device=torch.device("cpu")) as ld:
        assert len(ld) > KEEP_OUTPUTS + 2
        for _ in range(2):  # the second epoch reuses the pipeline (`reset`): the bound holds there too
            outputs = []
            for images, labels in ld:
                outputs.append(weakref.ref(images._base))  # the DALI output the NCHW view is taken of
                del images, labels  # the consumer drops the batch, as the training loop does
                gc.collect()
                alive = [ref() is not None for ref in outputs]
                kept = min(len(outputs), KEEP_OUTPUTS)
                assert alive == [False] * (len(outputs) - kept) + [True] * kept
    gc.collect()
    assert outputs[-1]() is None  # closing the loader lets the last ones go


def test_ffcv_leaves_torch_threads_as_the_trainer_set_them(demo_converted):
    """FFCV sets torch's thread count to its worker count when it builds a loader, starts an epoch and in
    its epoch thread; the backend restores the caller's count every time."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the trainer's choice (OMP_NUM_THREADS); FFCV would set 2
        cfg = _config(demo_converted, "ffcv")
        with make_loader(cfg, "train", device=torch.device("cpu")) as ld:
            assert torch.get_num_threads() == 1
            for _epoch in range(2):
                for _images, _labels in ld:
                    assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
