"""The loaders tools/bench_loaders.py races, each doing the same training-mode work on the same images:
RandomResizedCrop (the `DataConfig` defaults: scale 0.08-1, ratio 3/4-4/3) to `res`, horizontal flip, uint8
NCHW batches and labels, the last partial batch dropped, no augmentation policy. `fastlt` is `make_loader`;
the others are the raw libraries' own recipes and torchvision's, as their users would write them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from pipelines import DataConfig, make_loader

SCALE, RATIO = DataConfig.crop_scale, DataConfig.crop_ratio


def fastlt(
    backend: str, folder: Path, res: int, batch: int, workers: int, device: torch.device, views: int = 1
):
    """`make_loader` on `folder`/train in training mode, with no augmentation policy."""
    cfg = DataConfig(backend=backend, dir=str(folder), resolution=res, batch_size=batch, num_workers=workers)
    return make_loader(cfg, "train", views=views, device=device)


def raw_ffcv(path: Path, res: int, batch: int, workers: int, device: torch.device):
    """The plain FFCV recipe on the same .beton: RANDOM order, os_cache, the RandomResizedCrop decoder."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, ToDevice, ToTensor, ToTorchImage

    to_dev = [ToDevice(device, non_blocking=True)] if device.type == "cuda" else []
    image = [
        RandomResizedCropRGBImageDecoder((res, res), scale=SCALE, ratio=RATIO),
        RandomHorizontalFlip(),
        ToTensor(),
        *to_dev,
        ToTorchImage(channels_last=True),
    ]
    label = [IntDecoder(), ToTensor(), *to_dev]
    return Loader(
        str(path),
        batch_size=batch,
        num_workers=workers,
        os_cache=True,
        order=OrderOption.RANDOM,
        seed=0,
        drop_last=True,
        pipelines={"image": image, "label": label},
    )


class RawDali:
    """The plain DALI recipe on the same shards: the webdataset reader with its shuffle buffer."""

    def __init__(self, folder: Path, res: int, batch: int, workers: int, device: torch.device):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        tars = sorted(folder.glob("*.tar"))
        cuda = device.type == "cuda"

        @pipeline_def(
            batch_size=batch, num_threads=workers, device_id=(device.index or 0) if cuda else None, seed=0
        )
        def pipe():
            jpegs, cls = fn.readers.webdataset(
                paths=[str(t) for t in tars],
                index_paths=[str(t.with_suffix(".idx")) for t in tars],
                ext=["jpg", "cls"],
                name="reader",
                random_shuffle=True,
                initial_fill=1024,
            )
            images = fn.decoders.image_random_crop(
                jpegs,
                device="mixed" if cuda else "cpu",
                output_type=types.RGB,
                random_area=list(SCALE),
                random_aspect_ratio=list(RATIO),
                num_attempts=10,
            )
            images = fn.resize(images, resize_x=res, resize_y=res, antialias=True)
            images = fn.flip(images, horizontal=fn.random.coin_flip(probability=0.5))
            labels = fn.pad(cls, axes=[0], shape=[8], fill_value=0)  # the text label, made dense
            return images, (labels.gpu() if cuda else labels)

        self.it = DALIGenericIterator(
            pipe(),
            ["images", "labels"],
            reader_name="reader",
            last_batch_policy=LastBatchPolicy.DROP,
            auto_reset=True,
        )

    def __iter__(self) -> Iterable:
        for out in self.it:
            yield out[0]["images"].permute(0, 3, 1, 2), out[0]["labels"]


class TorchvisionFolder:
    """torchvision's recipe on the source JPEGs: ImageFolder and a DataLoader with worker processes."""

    def __init__(self, images: Path, res: int, batch: int, workers: int, device: torch.device):
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms

        tf = transforms.Compose(
            [
                transforms.RandomResizedCrop(res, scale=SCALE, ratio=RATIO),
                transforms.RandomHorizontalFlip(),
                transforms.PILToTensor(),
            ]
        )
        ds = datasets.ImageFolder(str(images / "train"), transform=tf)
        self.device = device
        self.loader = DataLoader(
            ds,
            batch_size=batch,
            shuffle=True,
            num_workers=workers,
            drop_last=True,
            persistent_workers=True,
            pin_memory=device.type == "cuda",
        )

    def __iter__(self) -> Iterable:
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)

    def worker_pids(self) -> list[int]:
        it = getattr(self.loader, "_iterator", None)
        return [w.pid for w in getattr(it, "_workers", [])]
