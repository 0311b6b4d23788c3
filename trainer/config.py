"""One typed config tree: frozen dataclasses, loaded from a TOML recipe plus `--section.key=value` overrides.

Each package owns the section it consumes: `[data]` is `pipelines.DataConfig`, `[loss]` is
`losses.LossConfig`; the trainer's own sections are defined here, and this module composes them and loads
them. Unknown sections or keys, values of the wrong type, unknown choices and out-of-range values are errors
that name the key (and the valid choices), so a typo in a recipe fails before any data is read.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from losses.config import LossConfig
from pipelines.config import DataConfig, check_choice, check_ranges


class ConfigError(ValueError):
    """A recipe or override that does not fit the config tree."""


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    seed: int = 0
    epochs: int = 90
    log_every: int = 50  # steps between host reads of the device-side loss accumulators
    eval_every: int = 1  # epochs (0: only at the end)
    checkpoint_every: int = 10  # epochs (0: only at the end); a checkpoint is always written at the end
    keep_checkpoints: int = 2  # the newest checkpoints kept: an older one to resume from if one is damaged
    progress: bool = True  # a progress bar on a terminal (a batch job's log gets plain lines either way)
    overwrite: bool = False  # True: a new run replaces the outputs of an earlier run in the same folder
    trackers: tuple[str, ...] = ()  # keys of trainer.trackers.TRACKERS: "tensorboard", "wandb"
    wandb_mode: Literal["offline", "online"] = "offline"
    wandb_project: str = "fastlt"

    def __post_init__(self) -> None:
        from trainer.trackers import TRACKERS

        for name in self.trackers:
            check_choice("run.trackers", name, TRACKERS)
        check_ranges(
            "run",
            (
                ("name", bool(self.name) and "/" not in self.name, "a non-empty folder name"),
                ("epochs", self.epochs >= 1, ">= 1"),
                ("log_every", self.log_every >= 1, ">= 1"),
                ("eval_every", self.eval_every >= 0, ">= 0"),
                ("checkpoint_every", self.checkpoint_every >= 0, ">= 0"),
                ("keep_checkpoints", self.keep_checkpoints >= 1, ">= 1"),
            ),
            self,
        )


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet50"  # a key of trainer.models.ARCHS
    # Places-LT's frozen ResNet-152: a state_dict file, or torchvision:ResNet152_Weights.IMAGENET1K_V1
    pretrained: str = ""
    channels_last: bool = True
    head_fp32: bool = True  # classifier and BCL heads in fp32 under bf16 autocast (raw cosines feed arccos)
    bcl_hidden: int = 0  # BCL projection MLP width; 0: the arch's default (CIFAR 512, large: feature dim)
    bcl_embed: int = 0  # BCL embedding size; 0: the arch's default (CIFAR 128, large 1024)
    sync_bn: bool = False  # BatchNorm statistics over every process's batch under DDP (trainer/sync_bn.py)
    # GML's MoCo student (loss gml / dbm_gml; trainer/gml_model.py): its frozen teacher and its queue.
    teacher: str = ""  # the teacher's run folder (its newest checkpoint) or a checkpoint file
    teacher_arch: str = ""  # a key of ARCHS the teacher must be; "": whatever the checkpoint holds
    gml_queue_size: int = 4096  # moco-k: keys in the class-balanced queue
    gml_base_k: int = 2  # slots every class gets before the rest is shared by the class prior
    gml_embed_dim: int = 32  # moco-dim: the projection heads' output
    gml_temperature: float = 0.1  # initial T_c (learnable, no weight decay)
    # NCL's experts (loss ncl / ncl_linear / dbm_ncl; trainer/ncl_model.py), each a body of `arch`.
    ncl_experts: int = 3
    ncl_moco_dim: int = 64  # the projectors' output, the keys' size
    ncl_queue: int = 1024  # MoCo keys per expert; the per-process batch must divide it
    ncl_ema: float = 0.999  # key bodies' EMA momentum
    ncl_ema_updates: int = 0  # EMA updates per step; 0: once per expert (the release's loop)

    def __post_init__(self) -> None:
        from trainer.classifier import ARCHS

        check_choice("model.arch", self.arch, ARCHS)
        if self.teacher_arch:
            check_choice("model.teacher_arch", self.teacher_arch, ARCHS)
        check_ranges(
            "model",
            (
                ("bcl_hidden", self.bcl_hidden >= 0, ">= 0"),
                ("bcl_embed", self.bcl_embed >= 0, ">= 0"),
                ("gml_queue_size", self.gml_queue_size >= 1, ">= 1"),
                ("gml_base_k", self.gml_base_k >= 1, ">= 1"),
                ("gml_embed_dim", self.gml_embed_dim >= 1, ">= 1"),
                ("gml_temperature", 0 < self.gml_temperature < math.inf, "a finite number > 0"),
                ("ncl_experts", self.ncl_experts >= 1, ">= 1"),
                ("ncl_moco_dim", self.ncl_moco_dim >= 1, ">= 1"),
                ("ncl_queue", self.ncl_queue >= 1, ">= 1"),
                ("ncl_ema", 0 <= self.ncl_ema <= 1, "in [0, 1]"),
                ("ncl_ema_updates", self.ncl_ema_updates >= 0, ">= 0 (0: once per expert)"),
            ),
            self,
        )


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.1  # for the global batch size
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = True  # False: no weight decay on normalisation layers and biases
    schedule: str = "cosine"  # a key of trainer.schedule.SCHEDULES
    warmup_epochs: int = 5
    milestones: tuple[int, ...] = (160, 180)  # 1-indexed epochs after which lr *= gamma (step schedule)
    gamma: float = 0.01

    def __post_init__(self) -> None:
        from trainer.schedule import SCHEDULES

        check_choice("optim.schedule", self.schedule, SCHEDULES)
        check_ranges(
            "optim",
            (
                ("lr", math.isfinite(self.lr) and self.lr > 0, "a finite number > 0"),
                ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
                ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, ">= 0"),
                ("warmup_epochs", self.warmup_epochs >= 0, ">= 0"),
                ("milestones", all(m >= 0 for m in self.milestones), "epochs >= 0"),
                ("gamma", math.isfinite(self.gamma) and self.gamma > 0, "a finite number > 0"),
            ),
            self,
        )
        if self.nesterov and self.momentum <= 0:
            raise ValueError("optim.nesterov: needs optim.momentum > 0")


Precision = Literal["auto", "bf16", "fp32"]


@dataclass(frozen=True)
class StepConfig:
    mode: str = "compile"  # a key of trainer.step.RUNNERS; "graph" falls back to "compile" on a CPU
    precision: Precision = "auto"  # auto: bf16 on CUDA, fp32 on a CPU
    # "default" compiles in seconds on every rank (autotuning modes take minutes, per rank and per shape: rank
    # skew against the NCCL timeout); "max-autotune-no-cudagraphs" for a long single-GPU run.
    compile_mode: str = "default"
    graph_warmup: int = 3  # real steps run before a CUDA-graph capture (at least 11 under DDP)
    compile_backend: str = "inductor"  # "aot_eager": trace without code generation (fast tests)
    ddp_bf16_grads: bool = False  # DDP all-reduces gradients in bf16 (half the traffic; a compression hook)

    def __post_init__(self) -> None:
        from trainer.runners import RUNNERS

        check_choice("step.mode", self.mode, RUNNERS)
        check_choice("step.precision", self.precision, typing.get_args(Precision))
        check_ranges("step", (("graph_warmup", self.graph_warmup >= 1, ">= 1"),), self)


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    step: StepConfig = field(default_factory=StepConfig)


@dataclass(frozen=True)
class Override:
    """A command-line value: its TOML reading, and the raw text for keys typed as strings
    (`--run.name=2024` names a run "2024"; TOML would read an integer)."""

    raw: str
    value: Any


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check (and gently convert) one value against its dataclass annotation."""
    if isinstance(value, Override):
        value = value.raw if hint is str and not isinstance(value.value, str) else value.value
    origin = typing.get_origin(hint)
    if origin is Literal:
        valid = typing.get_args(hint)
        if value not in valid:
            raise ConfigError(f"{key}: unknown value {value!r}; valid: {', '.join(map(repr, valid))}")
        return value
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
        try:
            kwargs[name] = cls(**checked)
        except ValueError as err:  # a section's own checks: choices and ranges, naming the key
            raise ConfigError(f"{source}: {err}") from None
    return Config(**kwargs)


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    return {name: dict(dataclasses.asdict(getattr(cfg, name))) for name in cfg.__dataclass_fields__}


def _parse_override_value(text: str) -> Override:
    """Override values are TOML literals; bare words fall back to strings (`--loss.name=dbm_ce`)."""
    try:
        return Override(text, tomllib.loads(f"v = {text}")["v"])
    except tomllib.TOMLDecodeError:
        return Override(text, text)


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
