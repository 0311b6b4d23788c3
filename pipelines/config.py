"""`DataConfig`: the `[data]` section of a recipe, handed whole to `make_loader`, and where a split's file is.

The loaders own this config: `trainer/config.py` only composes it into the run's tree, and every consumer
(backends, augmentations) reads an option by its key name here. Values are checked once, when the object
is built (a recipe load, or a script's `DataConfig(...)`), so a bad choice or range fails before any file
is opened, naming the key and the valid values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Split = Literal["train", "eval"]
CROPS = ("resized", "padded")  # training crop of view 0; "padded": CIFAR's RandomCrop(res, padding)
# How many steps a consumer may have queued on the device behind the one it is enqueuing: the training and
# evaluation loops (trainer.lead's ring) make the host wait before step i until step i - MAX_LEAD has
# finished. A backend that hands out its library's buffers without a copy must therefore keep the last
# MAX_LEAD + 1 batches it yielded alive: the one being enqueued and the MAX_LEAD the device may still read.
MAX_LEAD = 2


def check_choice(key: str, value: str, valid: Iterable[str]) -> None:
    """Raise a ValueError naming `key` and listing the valid values when `value` is not one of them."""
    valid = list(valid)
    if value not in valid:
        raise ValueError(f"{key}: unknown value {value!r}; valid: {', '.join(map(repr, valid))}")


def check_ranges(section: str, checks: Iterable[tuple[str, bool, str]], obj: object) -> None:
    """Raise for the first (key, ok, rule) that fails; NaN fails every comparison, so it is refused too."""
    for key, ok, rule in checks:
        if not ok:
            raise ValueError(f"{section}.{key}: must be {rule}, got {getattr(obj, key)!r}")


def data_path(directory: str | Path, stem: str, backend: str) -> Path:
    """Where `backend` reads the split named `stem` in `directory`.

    `directory/stem` as it is when it exists and the backend accepts it (data made elsewhere is rarely named
    `<stem><suffix>`). Otherwise the backend's suffix is appended, unless the name has a suffix of its own
    (then it is taken as it is, and the backend says what is wrong with it)."""
    from .backends import BACKENDS

    given = Path(directory) / stem
    if BACKENDS[backend].accepts(given):
        return given
    return given if Path(stem).suffix else Path(directory) / f"{stem}{BACKENDS[backend].suffix}"


@dataclass(frozen=True)
class DataConfig:
    backend: str = "ffcv"  # a key of pipelines.backends.BACKENDS
    dir: str = "data"  # folder with <stem>.beton, <stem>.dali/, <stem>.meta.json
    # split stem (or a file name with its suffix, or a folder of WebDataset shards) inside `dir`
    train: str = "train"
    eval: str = "test"
    resolution: int = 224
    eval_resolution: int = 0  # 0: same as resolution
    batch_size: int = 256  # global; divided by the number of processes
    eval_batch_size: int = 0  # 0: same as batch_size
    num_workers: int = 8  # FFCV's / DALI's threads per process
    hflip: bool = True
    auto_augment: str = ""  # "" (off) or a key of pipelines.augment.POLICIES
    randaugment_n: int = 2
    randaugment_m: float = 10.0
    # "torchvision": m is a bin of 31; "timm": m is timm's 0..10 level, each op fires w.p. 0.5 (the papers'
    # large-scale "rand-n2-m10-mstd0.5" = style "timm", m 10, magnitude_std 0.5, fill (124, 116, 104)).
    randaugment_style: str = "torchvision"  # a key of pipelines.augment.RANDAUGMENT_STYLES
    magnitude_std: float = 0.0
    augment_fill: tuple[int, ...] = (128, 128, 128)  # fill of AutoAugment / RandAugment's geometric ops
    cutout: int = 0  # side of the Cutout square in pixels, 0 = off
    # ColorJitter (brightness, contrast, saturation, hue) with p = 1 before the policy, on view 0 and on every
    # view of the "classification" view recipe (the papers' large-scale recipes: 0.4, 0.4, 0.4, 0); empty: off
    jitter: tuple[float, ...] = ()
    # Views 1.. of the "classification" view recipe (GML's q and k; view 0 is GML's cls view): after the
    # jitter and before the policy, RandomGrayscale with this probability, then GaussianBlur (sigma uniform
    # in [0.1, 2]) with this one (GML's ImageNet-LT views: 0.2 and 0.5); 0: off. The "contrastive" recipe
    # has its own, fixed grayscale and blur and refuses these keys.
    view_grayscale: float = 0.0
    view_blur: float = 0.0
    sampler: str = "uniform"  # a key of pipelines.samplers.SAMPLERS
    epoch_samples: int = 0  # samples per resampled epoch, 0: the natural epoch length
    drop_last: bool = (
        True  # training drops its last partial batch (static shapes); false keeps it, as released
    )
    crop: str = "resized"  # one of CROPS
    crop_padding: int = 4
    crop_scale: tuple[float, ...] = (0.08, 1.0)  # RandomResizedCrop area range
    crop_ratio: tuple[float, ...] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect-ratio range
    view_crop_scale: tuple[float, ...] = ()  # BCL's contrastive views' crop area range; empty: crop_scale
    eval_crop_ratio: float = 0.875  # eval centre crop side / shorter side (224/256); 1.0: whole image (CIFAR)
    # leave out (and list) the damaged samples every loader looks for when it opens, in training and in
    # evaluation (a backend that checks_samples); false: a damaged sample stops the run before it starts
    skip_corrupt: bool = False
    # the largest image (width x height) foreign data may hold: one huge image costs gigabytes a batch
    max_pixels: int = 1 << 26
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    # Data fastlt did not convert (a .beton from FFCV's own writer, a folder of WebDataset shards): the
    # .beton's image and label fields (fastlt's own are "image" and "label")...
    image_field: str = "image"
    label_field: str = "label"
    # ... its number of classes; 0: the largest label + 1. Set it when a split may lack the last classes (an
    # evaluation split without any image of class 999 would otherwise count 999 classes, not 1000).
    num_classes: int = 0
    # where label counts and DALI index files of such data are cached (never beside the data, which may be
    # read-only); empty: $XDG_CACHE_HOME/fastlt, else ~/.cache/fastlt
    cache_dir: str = ""

    def __post_init__(self) -> None:
        from .augment.policies import POLICIES, RANDAUGMENT_STYLES
        from .backends import BACKENDS
        from .samplers import SAMPLERS

        for key, valid in (
            ("backend", BACKENDS),
            ("auto_augment", ("", *POLICIES)),
            ("randaugment_style", RANDAUGMENT_STYLES),
            ("sampler", SAMPLERS),
            ("crop", CROPS),
        ):
            check_choice(f"data.{key}", getattr(self, key), valid)
        res = self.resolution
        check_ranges(
            "data",
            (
                ("resolution", res >= 1, ">= 1"),
                ("eval_resolution", self.eval_resolution >= 0, ">= 0 (0: resolution)"),
                ("batch_size", self.batch_size >= 1, ">= 1"),
                ("eval_batch_size", self.eval_batch_size >= 0, ">= 0 (0: batch_size)"),
                ("num_workers", self.num_workers >= 1, ">= 1"),
                ("randaugment_n", self.randaugment_n >= 0, ">= 0"),
                ("magnitude_std", self.magnitude_std >= 0, ">= 0"),
                ("cutout", 0 <= self.cutout <= res, f"in 0..resolution ({res})"),
                ("epoch_samples", self.epoch_samples >= 0, ">= 0 (0: the dataset size)"),
                ("crop_padding", 1 <= self.crop_padding <= res, f"in 1..resolution ({res})"),
                ("eval_crop_ratio", 0 < self.eval_crop_ratio <= 1, "in (0, 1]"),
                ("augment_fill", len(self.augment_fill) == 3, "3 values (R, G, B)"),
                (
                    "jitter",
                    not self.jitter
                    or (len(self.jitter) == 4 and min(self.jitter) >= 0 and self.jitter[3] <= 0.5),
                    "empty or 4 values >= 0 (brightness, contrast, saturation, hue <= 0.5)",
                ),
                ("view_grayscale", 0 <= self.view_grayscale <= 1, "a probability in [0, 1]"),
                ("view_blur", 0 <= self.view_blur <= 1, "a probability in [0, 1]"),
                ("mean", len(self.mean) == 3, "3 values"),
                ("std", len(self.std) == 3 and all(s > 0 for s in self.std), "3 positive values"),
                ("max_pixels", self.max_pixels >= 1, ">= 1"),
                ("num_classes", self.num_classes >= 0, ">= 0 (0: the largest label + 1)"),
                ("image_field", bool(self.image_field), "a field name"),
                (
                    "label_field",
                    self.label_field not in ("", self.image_field),
                    "a name other than image_field",
                ),
            ),
            self,
        )
        if self.skip_corrupt and not BACKENDS[self.backend].checks_samples:
            checking = [name for name, b in BACKENDS.items() if b.checks_samples]
            raise ValueError(
                f"data.skip_corrupt: only the {', '.join(checking)} backend can leave damaged samples out"
            )
        _range("crop_scale", self.crop_scale, 0.0, 1.0)
        _range("crop_ratio", self.crop_ratio, 1e-3, 1e3)
        if self.view_crop_scale:
            _range("view_crop_scale", self.view_crop_scale, 0.0, 1.0)

    def path(self, split: Split) -> Path:
        """The file or folder the backend reads for `split`."""
        return data_path(self.dir, self.train if split == "train" else self.eval, self.backend)


def _range(key: str, value: tuple[float, ...], lo: float, hi: float) -> None:
    if not (len(value) == 2 and lo <= value[0] <= value[1] <= hi):
        raise ValueError(
            f"data.{key}: must be [low, high] with {lo} <= low <= high <= {hi}, got {list(value)}"
        )
