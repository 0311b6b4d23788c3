"""DALI backend: a `.dali` folder of WebDataset shards, decoded by nvJPEG on the GPU (`mixed`) or on CPU.

Samples enter through `fn.external_source`, fed with the JPEG bytes of the indices this rank draws
(`samplers.EpochOrder`), sliced out of the memory-mapped tars at the offsets of their `.idx` files
(`shards.ShardSet`). That is DALI's documented route for custom and weighted sampling (its readers take no
sampler, DALI#3335), and using it for every sampler gives the FFCV backend's exact semantics: an epoch's order
is a pure function of (seed, epoch) so a resumed run redraws it, ranks hold disjoint equal-length slices with
equal batch counts (no process group needed), and evaluation shares are exact (no padding duplicates, the last
batch partial). `fn.readers.webdataset` would reshuffle only within a buffer from a fixed start, roll shards
across epochs and cannot parse the `.cls` text labels into a dense batch.

Graph: training decodes with `decoders.image_random_crop` (fused RandomResizedCrop window, ROI decode where
the codec allows) -> `resize` to the resolution -> `flip(horizontal=coin_flip)`; evaluation decodes the whole
image -> `resize(resize_shorter=res / ratio)` -> centre `crop`. Output uint8 HWC, turned into an NCHW
channels_last view. Extra views decode once and branch into independent `random_resized_crop` + flip.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .loader import LoaderSpec, derive_seed
from .meta import DatasetMeta
from .shards import ShardError, open_shards

PREFETCH = 2  # batches DALI prepares ahead of the one handed out


def _dali():
    try:
        from nvidia.dali import fn, pipeline, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator
    except ImportError as exc:  # pragma: no cover - environment problem
        raise ImportError(f"the dali backend needs `nvidia-dali-cuda120` ({exc}); run `make setup`") from exc
    return fn, pipeline, types, DALIGenericIterator


class DaliBackend:
    def __init__(self, spec: LoaderSpec, meta: DatasetMeta):
        self.spec = spec
        path = spec.path
        if not path.is_dir():
            what = "missing" if not path.exists() else "a file"
            raise ShardError(f"{path}: the dali backend reads a <stem>.dali folder of shards ({what})")
        self.shards = open_shards(path, meta)
        meta.check_labels(self.shards.labels, path)
        self.order = spec.epoch_order(self.shards.labels)
        self.num_batches = self.order.num_batches(spec.batch_size)
        self.cuda = spec.device.type == "cuda"
        self._batches: list[np.ndarray] = []  # the current epoch's batches, read by the source callback
        self._iterator = None
        self._pipe = None
        self._in_epoch = False  # an epoch was started and not run to its end
        self._generation = 0  # counts epochs started: a stale, abandoned epoch generator must not read on
        self._names = ["view0"] + [f"view{v}" for v in range(1, spec.views if spec.train else 1)] + ["labels"]

    # --- the external source: called by DALI (ahead of consumption) with the batch index in the epoch ---
    def _source(self, info):
        i = info.iteration
        if i >= len(self._batches):
            raise StopIteration
        idx = self._batches[i]
        return self.shards.jpegs(idx), self.shards.labels[idx]

    def _build(self):
        fn, pipeline, types, Iterator = _dali()
        s = self.spec
        device_id = (s.device.index or 0) if self.cuda else None  # None: no CUDA at all (CPU-only hosts)
        decoder = "mixed" if self.cuda else "cpu"
        pipe = pipeline.Pipeline(
            batch_size=s.batch_size,
            num_threads=s.threads,
            device_id=device_id,
            seed=derive_seed(s.seed, s.rank, 0xDA11),
            prefetch_queue_depth=PREFETCH,
        )
        res = s.resolution
        with pipe:
            jpegs, labels = fn.external_source(
                source=self._source,
                num_outputs=2,
                batch=True,
                batch_info=True,
                dtype=[types.UINT8, types.INT64],
            )
            if not s.train:
                images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
                images = fn.resize(images, resize_shorter=res / s.center_crop_ratio, antialias=True)
                outputs = [fn.crop(images, crop=(res, res), out_of_bounds_policy="pad")]
            elif s.views == 1 and s.crop == "padded":
                images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
                outputs = [self._padded_crop(fn, images)]
            elif s.views == 1:
                images = fn.decoders.image_random_crop(
                    jpegs,
                    device=decoder,
                    output_type=types.RGB,
                    random_area=list(s.scale),
                    random_aspect_ratio=list(s.ratio),
                    num_attempts=10,
                )
                images = fn.resize(images, resize_x=res, resize_y=res, antialias=True)
                outputs = [self._flip(fn, images) if s.hflip else images]
            else:  # decode once, branch into independent crops
                full = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
                outputs = []
                for v in range(s.views):
                    like0 = s.crops_like_view0(v)
                    if like0 and s.crop == "padded":
                        outputs.append(self._padded_crop(fn, full))
                        continue
                    crop = fn.random_resized_crop(
                        full,
                        size=(res, res),
                        random_area=list(s.scale if like0 else s.view_scale),
                        random_aspect_ratio=list(s.ratio),
                        num_attempts=10,
                        antialias=True,
                    )
                    outputs.append(self._flip(fn, crop) if (s.hflip or not like0) else crop)
            if self.cuda:
                labels = labels.gpu()
            pipe.set_outputs(*outputs, labels)
        self._pipe = pipe
        return Iterator

    def _padded_crop(self, fn, images):
        """The centre square resized to the resolution, zero-padded by `crop_padding`, cropped back at a
        random integer offset (torchvision's RandomCrop(res, padding)), then flipped."""
        s, res, pad = self.spec, self.spec.resolution, self.spec.crop_padding
        images = fn.resize(images, resize_shorter=res, antialias=True)
        images = fn.crop(images, crop=(res, res))
        images = fn.crop(
            images, crop=(res + 2 * pad, res + 2 * pad), out_of_bounds_policy="pad", fill_values=0
        )
        positions = [k / (2 * pad) for k in range(2 * pad + 1)]  # anchors 0..2*pad exactly
        images = fn.crop(
            images,
            crop=(res, res),
            crop_pos_x=fn.random.uniform(values=positions),
            crop_pos_y=fn.random.uniform(values=positions),
        )
        return self._flip(fn, images) if s.hflip else images

    @staticmethod
    def _flip(fn, images):
        return fn.flip(images, horizontal=fn.random.coin_flip(probability=0.5))

    def _open(self):
        """A fresh pipeline + iterator; the first batches are drawn from `self._batches` right away."""
        self._discard()
        Iterator = self._build()
        self._iterator = Iterator([self._pipe], self._names, auto_reset=False)

    def epoch(self, epoch: int) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        if self.num_batches == 0:
            return
        order = self.order(epoch)
        b = self.spec.batch_size
        self._batches = [order[i * b : (i + 1) * b] for i in range(self.num_batches)]
        self._generation += 1
        generation = self._generation
        n = 0
        try:
            if self._iterator is None or self._in_epoch:
                self._open()  # first epoch, or the last one was abandoned: its prefetched batches are stale
            else:
                self._iterator.reset()  # prefetches this epoch's first batches through the callback
        except RuntimeError as exc:
            raise self._failure(epoch, n, exc) from exc
        self._in_epoch = True
        while True:
            try:
                out = next(self._iterator)[0]
            except StopIteration:
                break
            except RuntimeError as exc:
                raise self._failure(epoch, n, exc) from exc
            n += 1
            yield [out[name].permute(0, 3, 1, 2) for name in self._names[:-1]], out["labels"]  # NHWC -> NCHW
            if self._generation != generation:
                raise RuntimeError("this epoch's iterator was abandoned: a newer epoch has started")
        self._in_epoch = False

    def _failure(self, epoch: int, n: int, exc: Exception) -> RuntimeError:
        self._discard()
        return RuntimeError(f"{self.spec.path}: DALI failed in epoch {epoch}: {self._suspects(n)}\n{exc}")

    def _suspects(self, n: int) -> str:
        """Name the samples that broke batch `n` (DALI runs a few batches ahead, so look at those too)."""
        candidates = np.concatenate(self._batches[n : n + PREFETCH + 2] or [np.zeros(0, np.int64)])
        bad = self.shards.undecodable(candidates)
        if bad:
            return "undecodable image(s) " + ", ".join(self.shards.describe(i) for i in bad[:10])
        return (
            "one of the samples from "
            + ", ".join(self.shards.describe(int(i)) for i in candidates[:3])
            + ", ..."
        )

    def _discard(self) -> None:
        self._iterator = None
        self._pipe = None

    def close(self) -> None:
        self._discard()
        self._batches = []
        self.shards.close()
