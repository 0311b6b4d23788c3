"""One typed config tree: frozen dataclasses, one section per package that consumes it.

Each package owns the section it consumes: `[data]` is `pipelines.DataConfig`, `[loss]` is
`losses.LossConfig`; the trainer's own sections are defined here, and `Config` composes them. Each section
checks its choices and ranges when it is built, naming the key; trainer/recipe.py reads and writes them
as TOML recipes with `--section.key=value` overrides, so a typo in a recipe fails before any data is read.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from losses.config import LossConfig
from pipelines.config import DataConfig, check_choice, check_ranges
from trainer.archs import check_arch, check_pretrained


class ConfigError(ValueError):
    """A recipe or override that does not fit the config tree."""


def _one_component(name: str) -> bool:
    """A run's folder is `run.out_dir/run.name`: the name must stay one folder inside out_dir."""
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    seed: int = 0  # 0 .. 2**31 - 1: NumPy takes 32-bit seeds, and each process adds its rank to it
    epochs: int = 90
    log_every: int = 50  # steps between host reads of the device-side loss accumulators
    eval_every: int = 1  # epochs (0: only at the end)
    checkpoint_every: int = 10  # epochs (0: only at the end); a checkpoint is always written at the end
    keep_checkpoints: int = 2  # the newest checkpoints kept: an older one to resume from if one is damaged
    progress: bool = True  # a progress bar on a terminal (a batch job's log gets plain lines either way)
    overwrite: bool = False  # True: a new run replaces the outputs of an earlier run in the same folder
    # On several nodes, how long each process waits to see the run folder rank 0 writes: NFS clients cache a
    # lookup that found nothing (every rank probed the folder before rank 0 made it) for 30-60 s by default.
    shared_check_s: float = 60.0
    trackers: tuple[str, ...] = ()  # keys of trainer.trackers.TRACKERS: "tensorboard", "wandb"
    wandb_mode: Literal["offline", "online"] = "offline"
    wandb_project: str = "fastlt"

    def __post_init__(self) -> None:
        from trainer.trackers import TRACKERS  # here: trackers reads this section (an import cycle otherwise)

        for name in self.trackers:
            check_choice("run.trackers", name, TRACKERS)
        check_ranges(
            "run",
            (
                (
                    "name",
                    _one_component(self.name),
                    "one folder name: not '', '.' or '..'; no '/', '\\', NUL",
                ),
                ("seed", 0 <= self.seed < 2**31, "in 0 .. 2**31 - 1"),
                ("epochs", self.epochs >= 1, ">= 1"),
                ("log_every", self.log_every >= 1, ">= 1"),
                ("eval_every", self.eval_every >= 0, ">= 0"),
                ("checkpoint_every", self.checkpoint_every >= 0, ">= 0"),
                ("keep_checkpoints", self.keep_checkpoints >= 1, ">= 1"),
                ("shared_check_s", self.shared_check_s >= 0, ">= 0"),
            ),
            self,
        )


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet50"  # a key of trainer.archs.ARCHS, or "timm:<name>" (any timm network's features)
    # Places-LT's frozen ResNet-152: a state_dict file, or torchvision:ResNet152_Weights.IMAGENET1K_V1;
    # a timm arch: a weights file, or timm:<name>[.<tag>] from the local Hugging Face / timm cache
    pretrained: str = ""
    channels_last: bool = True
    head_fp32: bool = True  # classifier and BCL heads in fp32 under bf16 autocast (raw cosines feed arccos)
    bcl_hidden: int = 0  # BCL projection MLP width; 0: the arch's default (CIFAR 512, large: feature dim)
    bcl_embed: int = 0  # BCL embedding size; 0: the arch's default (CIFAR 128, large 1024)
    sync_bn: bool = False  # BatchNorm statistics over every process's batch under DDP (trainer/sync_bn.py)
    # A classifier run with a one-view loss: images per sample its body encodes in one training pass, the loss
    # seeing view 0's logits only, so BatchNorm's statistics cover all of them; the extra views follow the
    # "classification" view recipe (GML's ImageNet-LT teacher, trained inside a MoCo model whose encoder
    # normalises [cls; q]: 2). 1: off.
    bn_views: int = 1
    # Stage 2 (cRT, trainer/stage2.py): a classifier run's folder (its newest checkpoint) or checkpoint file
    # whose body this run loads and freezes; its classifier is trained afresh. "": a one-stage run.
    init_from: str = ""
    # The model kinds' own keys stay flat in this section, so recipes keep `model.gml_*` / `model.ncl_*`;
    # their ranges are checked here only (the kinds' modules check what needs the data or the batch).
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
    ncl_queue: int = 1024  # MoCo keys per expert; the global batch (data.batch_size) must divide it
    ncl_ema: float = 0.999  # key bodies' EMA momentum
    ncl_ema_updates: int = 0  # EMA updates per step; 0: once per expert (the release's loop)

    def __post_init__(self) -> None:
        check_arch("model.arch", self.arch)
        check_pretrained(self.arch, self.pretrained)
        if self.teacher_arch:
            check_arch("model.teacher_arch", self.teacher_arch)
        check_ranges(
            "model",
            (
                ("bn_views", self.bn_views >= 1, ">= 1 (1: off)"),
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
        from trainer.schedule import (
            SCHEDULES,
        )  # here: schedule reads this section (an import cycle otherwise)

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
        from trainer.step import RUNNERS  # here: the step reads this section (an import cycle otherwise)

        check_choice("step.mode", self.mode, RUNNERS)
        check_choice("step.precision", self.precision, typing.get_args(Precision))
        check_ranges("step", (("graph_warmup", self.graph_warmup >= 1, ">= 1"),), self)


@dataclass(frozen=True)
class EvalConfig:
    """Post-hoc adjustments every evaluation also reports, beside the plain argmax (trainer/posthoc.py)."""

    la_tau: float = 0.0  # > 0: argmax(s * z - la_tau * log p) too, as `la_*` keys (Menon et al.'s post hoc)
    tau_norm: float = 0.0  # > 0: the classifier's w_c / ||w_c||^tau_norm too, as `tau_norm_*` (Kang et al.)

    def __post_init__(self) -> None:
        check_ranges(
            "eval",
            (
                ("la_tau", 0 <= self.la_tau < math.inf, "a finite number >= 0 (0: off)"),
                ("tau_norm", 0 <= self.tau_norm < math.inf, "a finite number >= 0 (0: off)"),
            ),
            self,
        )


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    step: StepConfig = field(default_factory=StepConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    return {name: dict(dataclasses.asdict(getattr(cfg, name))) for name in cfg.__dataclass_fields__}
