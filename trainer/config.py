"""One typed config tree: frozen dataclasses, loaded from a TOML recipe plus `--section.key=value` overrides.

Unknown sections or keys and values of the wrong type are errors that name the key and the valid choices,
so a typo in a recipe fails before any data is read.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConfigError(ValueError):
    """A recipe or override that does not fit the config tree."""


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    seed: int = 0
    epochs: int = 90
    log_every: int = 50  # steps between host reads of the device-side loss accumulators
    eval_every: int = 1  # epochs
    checkpoint_every: int = 10  # epochs; a checkpoint is always written at the end
    progress: bool = True
    overwrite: bool = False  # True: a new run replaces the outputs of an earlier run in the same folder


@dataclass(frozen=True)
class DataConfig:
    backend: str = "ffcv"  # "ffcv" | "dali"
    dir: str = "data"  # folder with <stem>.beton, <stem>.dali/, <stem>.meta.json
    train: str = "train"  # split stem
    eval: str = "test"
    resolution: int = 224
    eval_resolution: int = 0  # 0: same as resolution
    batch_size: int = 256  # global; divided by the number of processes
    eval_batch_size: int = 0  # 0: same as batch_size
    num_workers: int = 8
    hflip: bool = True
    auto_augment: str = ""  # "" | "imagenet" | "cifar10" | "randaugment"
    randaugment_n: int = 2
    randaugment_m: float = 10.0
    # "torchvision": m is a bin of 31; "timm": m is timm's 0..10 level, each op fires w.p. 0.5 (the papers'
    # large-scale "rand-n2-m10-mstd0.5" = style "timm", m 10, magnitude_std 0.5, fill (124, 116, 104)).
    randaugment_style: str = "torchvision"
    magnitude_std: float = 0.0
    augment_fill: tuple[int, ...] = (128, 128, 128)  # fill of AutoAugment / RandAugment's geometric ops
    cutout: int = 0  # side of the Cutout square in pixels, 0 = off
    sampler: str = "uniform"  # "uniform" | "class_balanced" | "sqrt"
    epoch_samples: int = 0  # samples per resampled epoch, 0: the natural epoch length
    crop: str = "resized"  # training crop: "resized" (RandomResizedCrop) | "padded" (CIFAR's pad-and-crop)
    crop_padding: int = 4  # "padded": RandomCrop(resolution, padding=crop_padding)
    crop_scale: tuple[float, ...] = (0.08, 1.0)  # "resized": RandomResizedCrop area range
    view_crop_scale: tuple[float, ...] = ()  # BCL's contrastive views' crop area range; empty: crop_scale
    eval_crop_ratio: float = 0.875  # eval centre crop side / shorter side (224/256); 1.0: whole image (CIFAR)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet50"
    pretrained: str = ""  # path to a torchvision state_dict (Places-LT's frozen ResNet-152)
    channels_last: bool = True
    head_fp32: bool = True  # classifier and BCL heads in fp32 under bf16 autocast (raw cosines feed arccos)
    bcl_hidden: int = 0  # BCL projection MLP width; 0: the arch's default (CIFAR 512, large: feature dim)
    bcl_embed: int = 0  # BCL embedding size; 0: the arch's default (CIFAR 128, large 1024)


@dataclass(frozen=True)
class LossConfig:
    name: str = "ce"
    scale: float = 30.0  # s of the cosine classifier (32 on CIFAR)
    max_margin: float = 0.1  # DBM K
    tau: float = 1.0
    lambda_inst: float = 1.0
    margin_norm: str = "min"  # "min" (paper) | "last" (released code's last-label normaliser)
    detach_difficulty: bool = False
    drw_epoch: int = 160
    drw_fraction: float = 0.0  # > 0: DRW starts at this fraction of the run instead of drw_epoch
    drw_beta: float = 0.9999
    fbl_weight: float = 150.0  # FBL's A (60 on CIFAR)
    ldam_max_margin: float = 0.5
    ldam_scale: float = 30.0
    bcl_alpha: float = 2.0
    bcl_beta: float = 0.6
    bcl_temperature: float = 0.1


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.1  # for the global batch size
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = True  # False: no weight decay on normalisation layers and biases
    schedule: str = "cosine"  # "cosine" | "step" | "cosine_shifted"
    warmup_epochs: int = 5
    milestones: tuple[int, ...] = (160, 180)  # 1-indexed epochs after which lr *= gamma (step schedule)
    gamma: float = 0.01


@dataclass(frozen=True)
class StepConfig:
    mode: str = "compile"  # "eager" | "compile" | "graph" (graph falls back to compile on a CPU)
    precision: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU) | "bf16" | "fp32"
    compile_mode: str = "max-autotune-no-cudagraphs"
    graph_warmup: int = 3  # real steps run before a CUDA-graph capture (at least 11 under DDP)
    compile_backend: str = "inductor"  # "aot_eager": trace without code generation (fast tests)


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    step: StepConfig = field(default_factory=StepConfig)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check (and gently convert) one value against its dataclass annotation."""
    hint = annotation if not isinstance(annotation, str) else eval(annotation, vars(typing), {})  # noqa: S307
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type, _) = typing.get_args(hint)
        return tuple(_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: unsupported union type {hint}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint}")


def _section_types(section_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def from_dict(tree: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from nested dicts, naming the offending key and the valid ones on any mismatch."""
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    section_types = typing.get_type_hints(Config)
    kwargs = {}
    for name, values in tree.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown section [{name}]; valid sections: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table of keys")
        cls = section_types[name]
        fields = _section_types(cls)
        checked = {}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(
                    f"{source}: unknown key {name}.{key}; valid keys in [{name}]: {', '.join(fields)}"
                )
            checked[key] = _coerce(value, fields[key], f"{source}: {name}.{key}")
        kwargs[name] = cls(**checked)
    return Config(**kwargs)


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    return {name: dict(dataclasses.asdict(getattr(cfg, name))) for name in cfg.__dataclass_fields__}


def _parse_override_value(text: str) -> Any:
    """Override values are TOML literals; bare words fall back to strings (`--loss.name=dbm_ce`)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--section.key=value` (or `section.key=value`) strings to a nested dict, returning a copy."""
    merged = {k: dict(v) for k, v in tree.items()}
    for raw in overrides:
        text = raw[2:] if raw.startswith("--") else raw
        path, sep, value = text.partition("=")
        section, dot, key = path.partition(".")
        if not sep or not dot or not section or not key:
            raise ConfigError(f"override {raw!r}: expected --section.key=value")
        merged.setdefault(section, {})[key] = _parse_override_value(value)
    return merged


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a TOML recipe (or defaults when path is None) and apply command-line overrides."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            tree = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    return from_dict(apply_overrides(tree, list(overrides)), source)


def dump_toml(cfg: Config) -> str:
    """The resolved config as a TOML recipe that load_config reads back to the same Config."""
    lines = []
    for section, values in to_dict(cfg).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
