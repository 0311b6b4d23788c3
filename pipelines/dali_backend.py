"""DALI backend: a `.dali` folder of WebDataset shards, decoded by nvJPEG on the GPU (`mixed`) or on CPU.

Samples enter through `fn.external_source` as the bytes of the indices this rank draws (`EpochOrder`),
sliced from the memory-mapped tars at their `.idx` offsets: DALI's readers take no sampler, so this is how
it gets the FFCV backend's exact order and rank slices. Training decodes a random window, resizes and
flips with every draw made on the host per (seed, rank, epoch, batch) (`dali_draws`); evaluation resizes
and centre-crops. At GPU rates the source hands over the mapped bytes without a copy (`_source`) and the
decoders' buffers are sized up front (`decoder_args`), so steady-state decoding allocates nothing (an
allocation would break the step's CUDA-graph capture).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import dali_draws
from .config import MAX_LEAD
from .dali_tuning import decoder_args
from .sample_check import SKIP_CORRUPT, checked_shards
from .shards import CorruptSampleError, check_shard_folder, open_shards

if TYPE_CHECKING:
    import torch

    from .config import DataConfig
    from .loader import LoaderSpec
    from .meta import DatasetMeta
    from .samplers import EpochOrder

log = logging.getLogger(__name__)

# Batches DALI prepares ahead of the one handed out. 4 = the MAX_LEAD (2) steps the loops may run ahead of
# the GPU (their bounded host lead) + the batch in the consumer's hands + 1 spare that absorbs a hiccup (a
# log-point sync, a GC pause, the first steps after an evaluation). DALI's default is 2; NVIDIA's MLPerf
# ResNet-50 configs use 3 to 5. Each extra batch costs only its decoded images (256 x 224 x 224 x 3 B = 39 MB
# a view).
PREFETCH = MAX_LEAD + 2
# Output batches kept referenced after they were handed out (see `epoch`).
KEEP_OUTPUTS = MAX_LEAD + 1


def _dali():
    try:
        from nvidia.dali import fn, pipeline, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator
    except ImportError as exc:  # pragma: no cover - environment problem
        raise ImportError(f"the dali backend needs `nvidia-dali-cuda130` ({exc}); run `make setup`") from exc
    return fn, pipeline, types, DALIGenericIterator


class DaliBackend:
    """The `Backend` of `<stem>.dali` folders (and of any folder of WebDataset shards)."""

    suffix = ".dali"
    checks_samples = True  # samples checked at open and as fed (`ShardSet.jpegs`): data.skip_corrupt works

    @classmethod
    def accepts(cls, path: Path) -> bool:
        return path.is_dir() and next(path.glob("*.tar"), None) is not None

    @classmethod
    def check_path(cls, path: Path) -> None:
        check_shard_folder(path)

    @classmethod
    def index_dir(cls, path: Path, cache: Path) -> Path | None:
        from .foreign import shard_indexes

        return shard_indexes(path, cache)

    @classmethod
    def read_labels(cls, path: Path, cfg: DataConfig, index_dir: Path | None) -> np.ndarray:
        """The shards' `.cls` labels; a bad one is an error naming its shard and key."""
        shards = open_shards(path, None, index_dir=index_dir)
        shards.close()
        return shards.labels

    @classmethod
    def format_entry(cls, path: Path, cfg: DataConfig, index_dir: Path | None) -> dict[str, Any]:
        return {"dir": str(path), "index_dir": str(index_dir) if index_dir else None}

    def __init__(self, spec: LoaderSpec, meta: DatasetMeta):
        check_shard_folder(spec.path)
        self.spec = spec
        # every sample's markers checked now (both splits), not mid-epoch; skip_corrupt leaves them out
        self.shards = checked_shards(open_shards(spec.path, meta, index_dir=spec.index_dir), spec, meta)
        self.labels = self.shards.labels
        # what the losses and metrics count: without the samples left out
        self.meta = _without(meta, self.shards.dropped, spec.path) if self.shards.dropped else meta
        self.num_batches = 0
        self.cuda = spec.device.type == "cuda"
        self._batches: list[np.ndarray] = []  # the current epoch's batches, read by the source callback
        self._decoder_args = decoder_args(meta.max_resolution) if self.cuda else {}
        # What the source handed DALI without a copy, kept alive until DALI is done with it (see `_source`).
        self._fed: collections.deque = collections.deque(maxlen=PREFETCH + 2)
        # What the iterator handed out without a copy, kept while queued steps may read it (see `epoch`).
        self._out: collections.deque = collections.deque(maxlen=KEEP_OUTPUTS)
        self._iterator = None
        self._pipe = None
        self._in_epoch = False  # an epoch was started and not run to its end
        self._epoch = 0  # the epoch the sources draw for (`dali_draws`)
        self._streams = 0  # external sources of draws built so far (each its own generator per batch)
        self._sizes = np.zeros((len(self.shards), 2), np.int32)  # (height, width), read on first use
        self._generation = 0  # counts epochs started: a stale, abandoned epoch generator must not read on
        self._names = ["view0"] + [f"view{v}" for v in range(1, spec.views)] + ["labels"]

    def start(self, order: EpochOrder, num_batches: int) -> None:
        self.order, self.num_batches = order, num_batches  # the pipeline is built by the first epoch

    # --- the external source: called by DALI (ahead of consumption) with the batch index in the epoch ---
    def _source(self, info):
        """The batch's JPEG bytes and labels, handed over without a copy (`no_copy=True`). Safe because:
        * the JPEG slices are views into the shards' read-only maps (`mmap.ACCESS_READ`): nothing can
          modify them, and a map is never unmapped while a view of it exists (`ShardSet.close` leaves an
          exported map to be released with its last view);
        * DALI needs a buffer only until the iteration it was fed for has been consumed, which its docs put
          at `prefetch_queue_depth` iterations after the feed; DALI asks for iteration i at most `PREFETCH`
          iterations before handing it out, and `self._fed` keeps the last `PREFETCH + 2` batches (views and
          the fresh labels array) referenced, so none can be freed early, whatever DALI keeps itself."""
        i = info.iteration
        if i >= len(self._batches):
            raise StopIteration
        idx = self._batches[i]
        batch = (self.shards.jpegs(idx), self.shards.labels[idx])
        self._fed.append(batch)
        return batch

    def _drawn(self, fn, types, kind: str, arg=None):
        """An external source of this batch's random draws of one `kind` (`dali_draws`): "window"
        (RandomResizedCrop's normalised (x, y) anchor and (w, h) shape, `arg` the area scale), "roi" (the same
        window as `fn.resize`'s relative (y, x) start and end), "offsets" (the padded crop's positions, `arg`
        the padding) or "flip" (a coin per image)."""
        stream = self._streams
        self._streams += 1
        outputs = {"window": 2, "roi": 2, "offsets": 2, "flip": 1}[kind]

        def source(info):
            i = info.iteration
            if i >= len(self._batches):
                raise StopIteration
            s, idx = self.spec, self._batches[i]
            rng = dali_draws.batch_generator(s.seed, s.rank, self._epoch, i, stream)
            if kind in ("window", "roi"):
                anchor, shape = dali_draws.resized_crop_windows(
                    rng, *self._image_sizes(idx), arg, s.cfg.crop_ratio
                )
                if kind == "window":
                    return anchor, shape
                return np.ascontiguousarray(anchor[:, ::-1]), np.ascontiguousarray((anchor + shape)[:, ::-1])
            if kind == "offsets":
                return dali_draws.padded_offsets(rng, len(idx), arg)
            return dali_draws.coins(rng, len(idx))

        dtype = types.INT32 if kind == "flip" else types.FLOAT
        return fn.external_source(
            source=source,
            num_outputs=outputs if outputs > 1 else None,
            batch=True,
            batch_info=True,
            dtype=[dtype] * outputs if outputs > 1 else dtype,
        )

    def _image_sizes(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Heights and widths of these samples, from their headers the first time each is seen."""
        new = np.unique(idx[self._sizes[idx, 0] == 0])
        for i, data in zip(new, self.shards.jpegs(new), strict=True):
            self._sizes[i] = dali_draws.image_size(data)
        return self._sizes[idx, 0], self._sizes[idx, 1]

    def _build(self):
        fn, pipeline, types, Iterator = _dali()
        s, cfg = self.spec, self.spec.cfg
        device_id = (s.device.index or 0) if self.cuda else None  # None: no CUDA at all (CPU-only hosts)
        decoder = "mixed" if self.cuda else "cpu"
        dec = self._decoder_args  # `mixed` only: hardware share, nvJPEG paddings, preallocation
        pipe = pipeline.Pipeline(
            batch_size=s.batch_size,
            num_threads=s.threads,
            device_id=device_id,
            seed=0,  # no operator draws: every random parameter comes from `_drawn`
            prefetch_queue_depth=PREFETCH,
            # Pin DALI's CPU threads to the cores of the GPU's socket (NVML's affinity, intersected with the
            # cores this process may use): no cross-socket hops for the JPEG bytes or the Huffman decoding.
            set_affinity=self.cuda,
        )
        res = s.resolution
        self._streams = 0
        with pipe:
            jpegs, labels = fn.external_source(
                source=self._source,
                num_outputs=2,
                batch=True,
                batch_info=True,
                dtype=[types.UINT8, types.INT64],
                no_copy=True,
            )
            if not s.train:
                images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB, **dec)
                images = fn.resize(images, resize_shorter=res / cfg.eval_crop_ratio, antialias=True)
                outputs = [fn.crop(images, crop=(res, res), out_of_bounds_policy="pad")]
            elif s.views == 1 and s.crop == "padded":
                images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB, **dec)
                outputs = [self._padded_crop(fn, types, images)]
            elif s.views == 1:  # decodes only the window
                anchor, shape = self._drawn(fn, types, "window", tuple(cfg.crop_scale))
                images = fn.decoders.image_slice(
                    jpegs,
                    anchor,
                    shape,
                    device=decoder,
                    output_type=types.RGB,
                    normalized_anchor=True,
                    normalized_shape=True,
                    axis_names="WH",
                    **dec,
                )
                images = fn.resize(images, resize_x=res, resize_y=res, antialias=True)
                outputs = [self._flip(fn, types, images) if cfg.hflip else images]
            else:  # decode once, branch into independent crops
                full = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB, **dec)
                outputs = []
                for v in range(s.views):
                    like0 = s.crops_like_view0(v)
                    if like0 and s.crop == "padded":
                        outputs.append(self._padded_crop(fn, types, full))
                        continue
                    scale = tuple(cfg.crop_scale if like0 else s.view_crop_scale)
                    start, end = self._drawn(fn, types, "roi", scale)
                    crop = fn.resize(  # the window, resized in one pass
                        full,
                        resize_x=res,
                        resize_y=res,
                        roi_start=start,
                        roi_end=end,
                        roi_relative=True,
                        antialias=True,
                    )
                    outputs.append(self._flip(fn, types, crop) if (cfg.hflip or not like0) else crop)
            if self.cuda:
                labels = labels.gpu()
            pipe.set_outputs(*outputs, labels)
        self._pipe = pipe
        return Iterator

    def _padded_crop(self, fn, types, images):
        """The centre square resized to the resolution, zero-padded by `data.crop_padding`, cropped back at
        a random integer offset (torchvision's RandomCrop(res, padding)), then flipped."""
        cfg, res, pad = self.spec.cfg, self.spec.resolution, self.spec.cfg.crop_padding
        images = fn.resize(images, resize_shorter=res, antialias=True)
        images = fn.crop(images, crop=(res, res))
        images = fn.crop(
            images, crop=(res + 2 * pad, res + 2 * pad), out_of_bounds_policy="pad", fill_values=0
        )
        x, y = self._drawn(fn, types, "offsets", pad)  # anchors 0..2*pad exactly
        images = fn.crop(images, crop=(res, res), crop_pos_x=x, crop_pos_y=y)
        return self._flip(fn, types, images) if cfg.hflip else images

    def _flip(self, fn, types, images):
        return fn.flip(images, horizontal=self._drawn(fn, types, "flip"))

    def _open(self):
        """A fresh pipeline + iterator; the first batches are drawn from `self._batches` right away."""
        self._discard()
        Iterator = self._build()
        self._iterator = Iterator([self._pipe], self._names, auto_reset=False)

    def epoch(self, epoch: int) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        if self.num_batches == 0:
            return
        order = self.order(epoch)
        self._epoch = epoch
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
        except CorruptSampleError:  # already names shard, key and index: no decoding scan needed
            self._discard()
            raise
        except RuntimeError as exc:
            raise self._failure(epoch, n, exc) from exc
        self._in_epoch = True
        while True:
            try:
                out = next(self._iterator)[0]
            except StopIteration:
                break
            except CorruptSampleError:
                self._discard()
                raise
            except RuntimeError as exc:
                raise self._failure(epoch, n, exc) from exc
            # The outputs are zero-copy (DLPack) views of buffers DALI may reuse without waiting for torch's
            # stream: keep the last MAX_LEAD + 1 referenced (docs/ARCHITECTURE.md, "Batch lifetime").
            self._out.append(out)
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
        self._fed.clear()  # drop our views first, so the shards' maps can close now
        self._out.clear()
        self.shards.close()


def _without(meta: DatasetMeta, dropped: tuple[dict, ...], path) -> DatasetMeta:
    """The meta of what is left once `data.skip_corrupt` has dropped samples: counts less those samples, and
    the dropped ones listed (and logged once) with shard, key and reason."""
    counts = list(meta.class_counts)
    for d in dropped:
        counts[d["label"]] -= 1
    listed = "; ".join(f"{Path(d['shard']).name}:{d['key']} ({d['error']})" for d in dropped[:10])
    log.warning(
        "%s: data.skip_corrupt leaves out %d corrupt sample(s), %d of %d remain: %s%s",
        path,
        len(dropped),
        meta.num_samples - len(dropped),
        meta.num_samples,
        listed,
        " ..." if len(dropped) > 10 else "",
    )
    skipped = tuple(
        {"path": f"{d['shard']}:{d['key']}", "line": d["index"], "error": d["error"], "by": SKIP_CORRUPT}
        for d in dropped
    )
    return dataclasses.replace(
        meta,
        class_counts=tuple(counts),
        num_samples=meta.num_samples - len(dropped),
        skipped=meta.skipped + skipped,
    )
