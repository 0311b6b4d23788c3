"""FFCV backend: a `.beton` file through `ffcv.loader.Loader`, decoding and cropping on CPU threads (numba).

Training decodes with RandomResizedCrop (or a centre square + padded RandomTranslate) and flips, with
draws seeded per (seed, rank, epoch, batch) (`ffcv_ops`); evaluation centre-crops. Output stays uint8
channels_last: a CPU NormalizeImage hangs FFCV's loader, and the model normalises anyway. The order is
fastlt's `EpochOrder`, not FFCV's (whose `distributed=True` needs a process group and pads evaluation),
so both backends draw the same samples. FFCV resets torch's CPU thread count to `num_workers`; this
backend puts the caller's back each time (`_keep_torch_threads`). Fields are `data.image_field` /
`data.label_field`; a foreign `.beton`'s other fields stay undecoded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DataError
from .sample_check import check_beton

if TYPE_CHECKING:
    import torch

    from .config import DataConfig
    from .loader import LoaderSpec
    from .meta import DatasetMeta
    from .samplers import EpochOrder


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


def read_beton(path, image_field: str, label_field: str) -> tuple[object, np.ndarray]:
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
    """The `Backend` of `<stem>.beton` files."""

    suffix = ".beton"
    checks_samples = False  # samples are checked at open (`check_beton`), but FFCV cannot leave one out

    @classmethod
    def accepts(cls, path: Path) -> bool:
        return path.is_file()

    @classmethod
    def check_path(cls, path: Path) -> None:
        """Refuse what cannot be a `.beton` before anything reads it (a folder, a meta file)."""
        if not path.is_file() or path.suffix not in (cls.suffix, ""):
            what = "a folder" if path.is_dir() else ("missing" if not path.exists() else "not a .beton")
            raise BetonError(f"{path}: the ffcv backend reads a <stem>.beton file ({what})")

    @classmethod
    def index_dir(cls, path: Path, cache: Path) -> None:
        return None  # a .beton indexes itself

    @classmethod
    def read_labels(cls, path: Path, cfg: DataConfig, index_dir: Path | None = None) -> np.ndarray:
        """The label column of the `.beton`'s metadata table (no image is decoded)."""
        labels = read_beton(path, cfg.image_field, cfg.label_field)[1]
        if len(labels) and labels.min() < 0:
            i = int(np.argmin(labels))
            raise BetonError(
                f"{path}: sample {i} (field {cfg.label_field!r}) has label {labels[i]}: labels must be class "
                "indices 0, 1, ..."
            )
        return labels

    @classmethod
    def format_entry(cls, path: Path, cfg: DataConfig, index_dir: Path | None) -> dict[str, Any]:
        return {"file": str(path), "image_field": cfg.image_field, "label_field": cfg.label_field}

    def __init__(self, spec: LoaderSpec, meta: DatasetMeta):
        self.check_path(spec.path)
        self.spec, self.meta = spec, meta
        cfg = spec.cfg
        reader, self.labels = read_beton(spec.path, cfg.image_field, cfg.label_field)
        check_beton(spec.path, reader, cfg, foreign=not meta.max_resolution)  # before a sample is decoded
        self._unused = [n for n in reader.handlers if n not in (cfg.image_field, cfg.label_field)]
        self._active = None
        self._loader = None
        self._streams = None  # the seeded ops' (epoch seed, batch counter) rows: `ffcv_ops.EpochStreams`
        self.num_batches = 0

    def start(self, order: EpochOrder, num_batches: int) -> None:
        spec, self.num_batches = self.spec, num_batches
        if len(order) == 0:
            return  # a rank with no evaluation share: nothing to build, nothing to yield
        ffcv = _ffcv()
        from .ffcv_ops import EpochStreams

        self._streams = EpochStreams()
        try:
            with _keep_torch_threads():
                self._loader = ffcv.loader.Loader(
                    str(spec.path),
                    batch_size=spec.batch_size,
                    num_workers=spec.threads,
                    os_cache=True,
                    order=_order_type()(order),
                    drop_last=spec.drops_last,
                    pipelines=self._pipelines(),
                    seed=spec.seed,
                )
        except BetonError:
            raise
        except Exception as exc:
            raise BetonError(
                f"{spec.path}: cannot build the FFCV loader ({type(exc).__name__}: {exc})"
            ) from exc
        self._outputs = list(self._loader.pipeline_specs)  # the order of the tuple each batch comes as

    def _image_ops(self, decoder, flip: bool, translate: int = 0) -> list:
        from ffcv.transforms import ToDevice, ToTensor, ToTorchImage

        from .ffcv_ops import SeededHorizontalFlip, SeededTranslate

        ops = [decoder]
        if translate:  # RandomCrop(size, padding=translate) with zero fill
            ops.append(SeededTranslate(self._streams.new(), padding=translate, fill=(0, 0, 0)))
        if flip:
            ops.append(SeededHorizontalFlip(self._streams.new()))
        ops.append(ToTensor())
        if self.spec.device.type != "cpu":
            ops.append(ToDevice(self.spec.device, non_blocking=True))
        ops.append(ToTorchImage(channels_last=True))
        return ops

    def _pipelines(self) -> dict:
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
        from ffcv.pipeline.pipeline_spec import PipelineSpec
        from ffcv.transforms import ToDevice, ToTensor

        from .ffcv_ops import SeededRandomResizedCrop

        s, cfg = self.spec, self.spec.cfg
        size = (s.resolution, s.resolution)

        def random_crop(scale) -> SeededRandomResizedCrop:
            return SeededRandomResizedCrop(self._streams.new(), size, scale=scale, ratio=cfg.crop_ratio)

        def view0_ops() -> list:
            if s.crop == "padded":  # the centre square at the resolution, then a padded random crop
                return self._image_ops(
                    CenterCropRGBImageDecoder(size, ratio=1.0), cfg.hflip, cfg.crop_padding
                )
            return self._image_ops(random_crop(cfg.crop_scale), cfg.hflip)

        if s.train:
            image = view0_ops()
        else:
            image = self._image_ops(CenterCropRGBImageDecoder(size, ratio=cfg.eval_crop_ratio), False)
        label = [IntDecoder(), ToTensor()]
        if s.device.type != "cpu":
            label.append(ToDevice(s.device, non_blocking=True))
        pipes = {name: None for name in self._unused}  # None: FFCV leaves the field out
        pipes.update({cfg.image_field: image, cfg.label_field: label})
        if s.train:
            for v in range(1, s.views):
                # Each pipeline draws its own crops and flips (each op its own stream).
                ops = (
                    view0_ops()
                    if s.crops_like_view0(v)
                    else self._image_ops(random_crop(s.view_crop_scale), True)
                )
                pipes[f"{cfg.image_field}_view{v}"] = PipelineSpec(
                    cfg.image_field, decoder=ops[0], transforms=ops[1:]
                )
        return pipes

    def epoch(self, epoch: int) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        from .loader import derive_seed

        self._stop_active()
        if self._loader is None or self.num_batches == 0:
            return
        self._loader.next_epoch = epoch
        # Every random draw of this epoch from (seed, rank, epoch, op) on: no state carries over epochs.
        self._streams.reset(
            [derive_seed(self.spec.seed, self.spec.rank, epoch, op) for op in range(len(self._streams))]
        )
        with _keep_torch_threads() as restore:
            it = iter(self._loader)
        self._active = it
        names, image = self._outputs, self.spec.cfg.image_field
        views = [names.index(image)] + [i for i, n in enumerate(names) if n.startswith(f"{image}_view")]
        label = names.index(self.spec.cfg.label_field)
        try:
            for k, out in enumerate(it):
                if k == 0:
                    restore()  # the epoch thread set them too, before it queued its first batch
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


@contextlib.contextmanager
def _keep_torch_threads():
    """Put torch's CPU thread count back as it was on entry, on exit and whenever the `restore` it yields is
    called: FFCV's `Compiler.set_num_threads(num_workers)` sets torch's too (a CPU run of a recipe went from
    5 to 25 minutes), and the decoding threads are FFCV's own (numba's count, which it keeps)."""
    import torch

    threads = torch.get_num_threads()

    def restore() -> None:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    try:
        yield restore
    finally:
        restore()


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
            """ffcv 1.0.2 accepts a custom order only as an instance it calls as `order(loader)`."""

            def __init__(self, order: EpochOrder):
                self.epoch_order = order

            def __call__(self, loader):
                TraversalOrder.__init__(self, loader)
                return self

            def sample_order(self, epoch: int) -> np.ndarray:
                return self.epoch_order(epoch)

        _ORDER_CLASS = _Order
    return _ORDER_CLASS
