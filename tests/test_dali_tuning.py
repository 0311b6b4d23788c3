"""The DALI backend's GPU tuning: decoder arguments DALI really has, paddings sized from the data set,
prefetch depth, and the no-copy feeding's keep-alive window."""

from __future__ import annotations

import os

import pytest

from pipelines import DataConfig, make_loader
from pipelines.dali_backend import PREFETCH
from pipelines.dali_tuning import (
    DALI_DEVICE_PADDING,
    DALI_HOST_PADDING,
    NVIDIA_DEVICE_PADDING,
    NVIDIA_HOST_PADDING,
    decoder_args,
)
from pipelines.loader import LoaderSpec


@pytest.mark.parametrize("op", ["decoders__Image", "decoders__ImageRandomCrop"])
@pytest.mark.parametrize("max_resolution", [0, 512])
def test_decoder_args_are_arguments_of_both_decoders(op, max_resolution):
    from nvidia.dali import backend

    schema = backend.GetSchema(op)
    for name in decoder_args(max_resolution):
        assert schema.HasArgument(name), f"{op} has no argument {name!r}"
    src = backend.GetSchema("ExternalSource")
    assert src.HasArgument("no_copy")


def test_paddings_follow_nvidia_and_never_drop_below_dali_defaults():
    unbounded = decoder_args(0)
    assert unbounded["device_memory_padding"] == NVIDIA_DEVICE_PADDING
    assert unbounded["host_memory_padding"] == NVIDIA_HOST_PADDING
    small = decoder_args(512)  # fastlt's default conversion: DALI's defaults already cover 512 px
    assert small["device_memory_padding"] == DALI_DEVICE_PADDING
    assert small["host_memory_padding"] == DALI_HOST_PADDING
    assert small["preallocate_width_hint"] == small["preallocate_height_hint"] == 512
    huge = decoder_args(8000)  # larger than any ImageNet image: more than NVIDIA's figures
    assert huge["device_memory_padding"] > NVIDIA_DEVICE_PADDING
    assert huge["host_memory_padding"] > NVIDIA_HOST_PADDING
    assert 0.65 < small["hw_decoder_load"] <= 1.0  # more than DALI's default share on the HW decoder


def test_worker_threads_respect_the_cpu_affinity(tmp_path):
    allowed = len(os.sched_getaffinity(0))

    def threads(workers):
        return LoaderSpec(DataConfig(num_workers=workers), "train", tmp_path, 8, "cpu").threads

    assert threads(10_000) == allowed
    assert threads(1) == 1


def test_no_copy_feeding_keeps_the_last_batches_alive(demo_converted):
    cfg = DataConfig(backend="dali", dir=str(demo_converted), batch_size=8, resolution=32, num_workers=1)
    loader = make_loader(cfg, "train")
    assert PREFETCH >= 3
    with loader:
        backend = loader.backend
        for _ in loader:
            fed = list(backend._fed)
            # every batch DALI may still read (the prefetched ones and the one handed out) is referenced
            assert 1 <= len(fed) <= PREFETCH + 2
            jpegs, labels = fed[-1]
            assert len(jpegs) == len(labels) == 8
            assert all(j.base is not None for j in jpegs)  # views into the mapped shards, not copies
    assert len(backend._fed) == 0  # close() lets go, so the maps can close
