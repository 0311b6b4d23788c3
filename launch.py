"""fastlt's entry point and composition root: argv -> Config -> Accelerator -> parts -> trainer.loop.fit.

    python launch.py --config configs/demo.toml [--section.key=value ...]
    python launch.py --resume runs/NAME [--section.key=value ...]
    accelerate launch [--num_machines M --machine_rank R --main_process_ip IP ...] launch.py --config X.toml
    torchrun --nproc_per_node N launch.py --config X.toml

This is the only module that knows every part: it reads the dataset meta, builds the loss, the model, the
optimizer, the training and evaluation steps and one loader per split (each process loads its own shard:
Accelerate's `prepare` does not shard FFCV or DALI loaders), then hands them to `fit`. `data.batch_size`
is the global batch; each of the N processes loads batch_size / N.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from trainer.config import Config, ConfigError, LossConfig, load_config

BACKEND_SUFFIX = {"ffcv": ".beton", "dali": ".dali"}


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        prog="launch.py",
        description="Train a long-tailed classifier; override any config key with --section.key=value.",
    )
    p.add_argument("--config", help="TOML recipe (configs/*.toml)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    args, rest = p.parse_known_args(argv)
    overrides: list[str] = []
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--") or "." not in tok.split("=", 1)[0]:
            p.error(f"unrecognised argument {tok!r}: overrides look like --section.key=value")
        if "=" not in tok and i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            tok = f"{tok}={rest[i + 1]}"  # also accept `--section.key value`
            i += 1
        overrides.append(tok)
        i += 1
    if args.resume and args.config:
        p.error("--resume reads RUN_DIR/config.toml; give overrides, not --config")
    if not args.resume and not args.config:
        p.error("one of --config or --resume is required")
    return args, overrides


def _choice(key: str, value: str, valid: Any) -> None:
    if value not in valid:
        raise ConfigError(f"{key}: unknown value {value!r}; valid: {', '.join(map(str, valid))}")


def check_names(cfg: Config) -> None:
    """Every name in the config against its registry, before any data is read or model built."""
    import losses
    from pipelines.augment import POLICIES, RANDAUGMENT_STYLES
    from pipelines.factory import CROPS
    from pipelines.samplers import SAMPLERS
    from trainer.models import ARCHS
    from trainer.schedule import SCHEDULES
    from trainer.step import RUNNERS

    _choice("data.backend", cfg.data.backend, BACKEND_SUFFIX)
    _choice("data.auto_augment", cfg.data.auto_augment, ("", *POLICIES))
    _choice("data.randaugment_style", cfg.data.randaugment_style, RANDAUGMENT_STYLES)
    _choice("data.crop", cfg.data.crop, CROPS)
    _choice("data.sampler", cfg.data.sampler, SAMPLERS)
    _choice("model.arch", cfg.model.arch, ARCHS)
    _choice("loss.name", cfg.loss.name, losses.loss_names())
    _choice("optim.schedule", cfg.optim.schedule, SCHEDULES)
    _choice("step.mode", cfg.step.mode, RUNNERS)
    _choice("step.precision", cfg.step.precision, ("auto", "bf16", "fp32"))
    missing = set(losses.loss_params(cfg.loss.name)) - set(LossConfig.__dataclass_fields__)
    if missing:
        raise ConfigError(f"loss.name={cfg.loss.name!r} takes {sorted(missing)}, which [loss] does not have")
    for key in ("run.epochs", "data.batch_size", "data.resolution"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(getattr(cfg, section), name)}")


def data_path(cfg: Config, stem: str) -> Path:
    return Path(cfg.data.dir) / f"{stem}{BACKEND_SUFFIX[cfg.data.backend]}"


def make_accelerator(cfg: Config) -> Any:
    import torch
    from accelerate import Accelerator

    if cfg.step.mode == "graph" and torch.cuda.is_available():
        # A captured DDP step cannot have NCCL's watchdog tear down the communicator mid-graph (spec §5.2).
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")
    # The step runs its own bf16 autocast (cache disabled, capturable); Accelerate only places the model,
    # wraps it in DDP and gives ranks. Set ACCELERATE_USE_CPU=1 (or `accelerate launch --cpu`) to force a CPU.
    return Accelerator(mixed_precision="no", step_scheduler_with_optimizer=False)


def _per_rank(key: str, total: int, world: int) -> int:
    if total % world:
        raise ConfigError(f"{key}={total} must be divisible by the number of processes ({world})")
    return total // world


def build(cfg: Config, accelerator: Any) -> Any:
    """Every part of a run, for this process."""
    import torch
    from accelerate.utils import set_seed

    import losses
    from pipelines import make_loader
    from pipelines.meta import read_meta
    from trainer.loop import Parts
    from trainer.models import build_model
    from trainer.optim import build_optimizer
    from trainer.step import EvalStep, TrainStep

    d = cfg.data
    device = accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    train_path, eval_path = data_path(cfg, d.train), data_path(cfg, d.eval)
    meta, eval_meta = read_meta(train_path), read_meta(eval_path)
    if eval_meta.num_classes != meta.num_classes:
        raise ConfigError(
            f"data.eval={d.eval!r} has {eval_meta.num_classes} classes but data.train={d.train!r} "
            f"has {meta.num_classes}"
        )
    counts = tuple(meta.class_counts)
    if device.type == "cuda":
        # Shapes are static, so cuDNN's per-shape autotuning runs once. (TF32 matmuls stay off: the cosine
        # head is kept in fp32 on purpose, its raw cosines feed an arccos.)
        torch.backends.cudnn.benchmark = True

    hparams = {k: getattr(cfg.loss, k) for k in losses.loss_params(cfg.loss.name)}
    loss = losses.build_loss(cfg.loss.name, counts, **hparams).to(device)
    set_seed(cfg.run.seed)  # the same initial weights on every process
    model = build_model(
        cfg.model, meta.num_classes, loss.head, mean=d.mean, std=d.std, bcl_heads=loss.num_views > 1
    ).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    if device.type == "cuda" and world > 1 and cfg.step.mode == "graph":
        side = torch.cuda.Stream(device)
        with torch.cuda.stream(side):  # DDP built on a side stream so its buffers can join a capture (§5.2)
            model, prepared_opt = accelerator.prepare(model, optimizer)
        torch.cuda.current_stream(device).wait_stream(side)
    else:
        model, prepared_opt = accelerator.prepare(model, optimizer)
    train_step = TrainStep(model, loss, prepared_opt, optimizer.lr, cfg.step, device, meta.num_classes)
    eval_step = EvalStep(model, cfg.step, device, meta.num_classes)

    batch = _per_rank("data.batch_size", d.batch_size, world)
    eval_batch = math.ceil((d.eval_batch_size or d.batch_size) / world)  # any size: the last batch is partial
    common = dict(device=device, num_workers=d.num_workers, rank=rank, world_size=world, seed=cfg.run.seed)
    train_loader = make_loader(
        d.backend,
        str(train_path),
        train=True,
        batch_size=batch,
        resolution=d.resolution,
        hflip=d.hflip,
        auto_augment=d.auto_augment or None,
        cutout=d.cutout,
        sampler=d.sampler,
        num_samples=d.epoch_samples or None,
        randaugment_n=d.randaugment_n,
        randaugment_m=d.randaugment_m,
        augment_options={
            "randaugment_style": d.randaugment_style,
            "magnitude_std": d.magnitude_std,
            "fill": tuple(d.augment_fill),
        },
        views=loss.num_views,
        crop=d.crop,
        crop_padding=d.crop_padding,
        scale=tuple(d.crop_scale),
        view_scale=tuple(d.view_crop_scale) or None,
        **common,
    )
    eval_loader = make_loader(
        d.backend,
        str(eval_path),
        train=False,
        batch_size=eval_batch,
        resolution=d.eval_resolution or d.resolution,
        center_crop_ratio=d.eval_crop_ratio,
        **common,
    )
    # Each process draws its own augmentations and data order from here on (the weights above are shared).
    set_seed(cfg.run.seed, device_specific=True)
    return Parts(
        model=model,
        loss=loss,
        optimizer=optimizer,
        train_step=train_step,
        eval_step=eval_step,
        train_loader=train_loader,
        eval_loader=eval_loader,
        class_counts=counts,
        global_batch=batch * world,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run one training job; return the results written to results.json."""
    args, overrides = parse_args(sys.argv[1:] if argv is None else list(argv))
    from trainer import rundir

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / rundir.CONFIG_FILE).is_file():
            raise rundir.RunDirError(f"--resume {run_dir}: no {rundir.CONFIG_FILE} there; not a run folder")
        cfg = load_config(run_dir / rundir.CONFIG_FILE, overrides)
    else:
        cfg = load_config(args.config, overrides)
        run_dir = rundir.run_dir_for(cfg)
        if not cfg.run.overwrite:
            rundir.check_fresh(run_dir)
    check_names(cfg)

    from trainer.loop import fit

    accelerator = make_accelerator(cfg)
    if accelerator.is_main_process:
        if cfg.run.overwrite and not args.resume:
            rundir.clear_run(run_dir)
        env = rundir.environment(accelerator)
        rundir.start_run_dir(run_dir, cfg, env, resumed=bool(args.resume))
    accelerator.wait_for_everyone()
    parts = build(cfg, accelerator)
    try:
        return fit(cfg, accelerator, parts, run_dir, resume=bool(args.resume))
    finally:
        parts.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pipelines.meta import MetaError
    from trainer.checkpoint import CheckpointError
    from trainer.rundir import RunDirError

    try:
        main()
    except (ConfigError, RunDirError, CheckpointError, MetaError) as err:
        sys.exit(f"launch.py: {err}")
