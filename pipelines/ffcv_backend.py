"""FFCV backend: a `.beton` through `ffcv.loader.Loader`, decoding and cropping on CPU threads (numba).

Pipelines, per the FFCV traps in spec/pipelines.md:
- training: RandomResizedCrop decoder -> flip -> ToTensor -> ToDevice(non_blocking) -> ToTorchImage
  (channels_last); evaluation: CenterCrop decoder (ratio 224/256 by default) -> ToTensor -> ToDevice ->
  ToTorchImage.
  No CPU NormalizeImage: after ToTensor it hangs the Loader, and the model normalises anyway (uint8 out).
- `os_cache=True`: the page cache holds the file once for every rank on the node.
- Order: our own `TraversalOrder` (samplers.EpochOrder). Every rank draws the same stream from (seed, epoch)
  and keeps its slice, so no process group is needed, batch counts match across ranks, and evaluation shares
  are exact (FFCV's `distributed=True` needs torch.distributed and pads evaluation with duplicates;
  QUASI_RANDOM gives class-correlated batches and refuses distributed). ffcv 1.0.2 accepts a custom order
  only as a callable instance (`order(loader)`), hence `_Order.__call__`.
- An abandoned epoch's iterator thread is stopped and joined (FFCV leaks it otherwise, ffcv#345).

Fields: the image and label fields are named by `data.image_field` / `data.label_field` ("image" and
"label", as fastlt's converter and ffcv-imagenet write them); any other field of a foreign `.beton` is left
undecoded. Extra views (`views=3`) map two more pipelines onto the same image field; each decodes it again.
Note FFCV sets torch's CPU thread count to `num_workers` whenever it builds or iterates a loader.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .errors import DataError
from .loader import LoaderSpec
from .meta import DatasetMeta
from .samplers import EpochOrder

IMAGE_FIELD = "image"  # the defaults of data.image_field / data.label_field
LABEL_FIELD = "label"


class BetonError(DataError):
    """A `.beton` that cannot be read or lacks the fields the loader needs; the message names the file."""


def _ffcv():
    """Import FFCV lazily: it JIT-compiles with numba and is only needed when this backend is used."""
    try:
        import ffcv  # noqa: F401
    except ImportError as exc:  # pragma: no cover - environment problem
        raise ImportError(f"the ffcv backend needs the `ffcv` package ({exc}); run `make setup`") from exc
    import ffcv.loader
    import ffcv.pipeline.pipeline_spec
    import ffcv.traversal_order.base

    return ffcv


def check_path(path) -> None:
    """Refuse what cannot be a `.beton` before anything reads it (a folder, a meta file)."""
    if not path.is_file() or path.suffix not in (".beton", ""):
        what = "a folder" if path.is_dir() else ("missing" if not path.exists() else "not a .beton")
        raise BetonError(f"{path}: the ffcv backend reads a <stem>.beton file ({what})")


def read_beton(
    path, image_field: str = IMAGE_FIELD, label_field: str = LABEL_FIELD
) -> tuple[object, np.ndarray]:
    """(ffcv Reader, labels) of a `.beton`; labels come from the metadata table (no image is decoded). The
    image field must be an RGB image field and the label field an int field; an error lists what it has."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.reader import Reader

    try:
        reader = Reader(str(path))
    except Exception as exc:
        raise BetonError(f"{path}: not a readable FFCV .beton file ({type(exc).__name__}: {exc})") from None
    fields = list(reader.handlers)
    has = ", ".join(f"{name!r} ({type(h).__name__})" for name, h in reader.handlers.items())
    for key, name, kind in (
        ("image_field", image_field, RGBImageField),
        ("label_field", label_field, IntField),
    ):
        if name not in fields:
            raise BetonError(f"{path}: no field {name!r} (data.{key}); its fields: {has}")
        if not isinstance(reader.handlers[name], kind):
            raise BetonError(
                f"{path}: field {name!r} (data.{key}) is not an {kind.__name__}; its fields: {has}"
            )
    ix = fields.index(label_field)
    labels = np.asarray(reader.metadata[f"f{ix}"], dtype=np.int64).reshape(-1)
    return reader, labels


class FfcvBackend:
    def __init__(self, spec: LoaderSpec, meta: DatasetMeta):
        ffcv = _ffcv()
        self.spec = spec
        path = spec.path
        check_path(path)
        reader, labels = read_beton(path, spec.image_field, spec.label_field)
        self._unused = [name for name in reader.handlers if name not in (spec.image_field, spec.label_field)]
        meta.check_labels(labels, path)
        self.meta = meta
        self.order = spec.epoch_order(labels)
        self.num_batches = self.order.num_batches(spec.batch_size, spec.drops_last)
        self._active = None
        self._loader = None
        if len(self.order) == 0:
            return  # a rank with no evaluation share: nothing to build, nothing to yield
        try:
            self._loader = ffcv.loader.Loader(
                str(path),
                batch_size=spec.batch_size,
                num_workers=spec.threads,
                os_cache=True,
                order=_order_type()(self.order),
                drop_last=spec.drops_last,
                pipelines=self._pipelines(),
                seed=spec.seed,
            )
        except BetonError:
            raise
        except Exception as exc:
            raise BetonError(f"{path}: cannot build the FFCV loader ({type(exc).__name__}: {exc})") from exc
        self._outputs = list(self._loader.pipeline_specs)  # the order of the tuple each batch comes as

    def _image_ops(self, decoder, flip: bool, translate: int = 0) -> list:
        from ffcv.transforms import RandomHorizontalFlip, RandomTranslate, ToDevice, ToTensor, ToTorchImage

        ops = [decoder]
        if translate:  # RandomCrop(size, padding=translate) with zero fill
            ops.append(RandomTranslate(padding=translate, fill=(0, 0, 0)))
        if flip:
            ops.append(RandomHorizontalFlip())
        ops.append(ToTensor())
        if self.spec.device.type != "cpu":
            ops.append(ToDevice(self.spec.device, non_blocking=True))
        ops.append(ToTorchImage(channels_last=True))
        return ops

    def _pipelines(self) -> dict:
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
        from ffcv.pipeline.pipeline_spec import PipelineSpec
        from ffcv.transforms import ToDevice, ToTensor

        s = self.spec
        size = (s.resolution, s.resolution)

        def view0_ops() -> list:
            if s.crop == "padded":  # the centre square at the resolution, then a padded random crop
                return self._image_ops(CenterCropRGBImageDecoder(size, ratio=1.0), s.hflip, s.crop_padding)
            return self._image_ops(
                RandomResizedCropRGBImageDecoder(size, scale=s.scale, ratio=s.ratio), s.hflip
            )

        if s.train:
            image = view0_ops()
        else:
            image = self._image_ops(CenterCropRGBImageDecoder(size, ratio=s.center_crop_ratio), False)
        label = [IntDecoder(), ToTensor()]
        if s.device.type != "cpu":
            label.append(ToDevice(s.device, non_blocking=True))
        pipes = {name: None for name in self._unused}  # None: FFCV leaves the field out
        pipes.update({s.image_field: image, s.label_field: label})
        if s.train:
            for v in range(1, s.views):
                # Each pipeline draws its own crops and flips (numba's per-thread generators).
                ops = (
                    view0_ops()
                    if s.crops_like_view0(v)
                    else self._image_ops(
                        RandomResizedCropRGBImageDecoder(size, scale=s.view_scale, ratio=s.ratio), True
                    )
                )
                pipes[f"{s.image_field}_view{v}"] = PipelineSpec(
                    s.image_field, decoder=ops[0], transforms=ops[1:]
                )
        return pipes

    def epoch(self, epoch: int) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        self._stop_active()
        if self._loader is None or self.num_batches == 0:
            return
        self._loader.next_epoch = epoch
        it = iter(self._loader)
        self._active = it
        names, image = self._outputs, self.spec.image_field
        views = [names.index(image)] + [i for i, n in enumerate(names) if n.startswith(f"{image}_view")]
        label = names.index(self.spec.label_field)
        try:
            for out in it:
                yield [out[i] for i in views], out[label].reshape(-1)
                if self._active is not it:
                    raise RuntimeError("this epoch's iterator was abandoned: a newer epoch has started")
        finally:
            if self._active is it:
                self._active = None
            _stop(it)

    def _stop_active(self) -> None:
        it, self._active = self._active, None
        if it is not None:
            _stop(it)

    def close(self) -> None:
        self._stop_active()
        self._loader = None


def _stop(it) -> None:
    """Stop an FFCV EpochIterator thread and wait for it (ffcv 1.0.2 leaves it running otherwise)."""
    it.terminate_event.set()
    if it.is_alive():
        it.join(timeout=30)
    it.close()


_ORDER_CLASS = None


def _order_type():
    """A TraversalOrder subclass built on first use (so importing this module does not import FFCV)."""
    global _ORDER_CLASS
    if _ORDER_CLASS is None:
        from ffcv.traversal_order.base import TraversalOrder

        class _Order(TraversalOrder):
            """ffcv 1.0.2 calls `order(loader)` on the instance it is given (spec/pipelines.md §2.7)."""

            def __init__(self, order: EpochOrder):
                self.epoch_order = order

            def __call__(self, loader):
                TraversalOrder.__init__(self, loader)
                return self

            def sample_order(self, epoch: int) -> np.ndarray:
                return self.epoch_order(epoch)

        _ORDER_CLASS = _Order
    return _ORDER_CLASS
