"""fastlt's entry point and composition root: argv -> Config -> Accelerator -> parts -> trainer.loop.fit.

    python launch.py --config configs/demo.toml [--section.key=value ...]
    python launch.py --resume runs/NAME [--section.key=value ...]
    accelerate launch [--num_machines M --machine_rank R --main_process_ip IP ...] launch.py --config X.toml
    torchrun --nproc_per_node N launch.py --config X.toml

This is the only module that knows every part: it builds one loader per split (each process loads its own
shard: Accelerate's `prepare` does not shard FFCV or DALI loaders; `data.batch_size` is the global batch, so
each of the N processes loads batch_size / N), the loss from the training split's class counts, the model,
the optimizer, the training and evaluation steps, then hands them to `fit`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from trainer.config import Config, ConfigError
from trainer.recipe import launcher_precision, load_config

log = logging.getLogger("launch")


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


class LaunchError(RuntimeError):
    """The processes of a job do not form the job the launcher started."""


def make_accelerator(cfg: Config) -> Any:
    import torch
    from accelerate import Accelerator

    if cfg.step.mode == "graph" and torch.cuda.is_available():
        # A captured DDP step cannot have NCCL's watchdog tear down the communicator mid-graph (spec §5.2).
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and not torch.cuda.is_available():
        # Without CUDA, Accelerate joins torchrun's processes into one job only in its CPU mode; otherwise
        # each process would train alone on all the data and write the same run folder.
        os.environ.setdefault("ACCELERATE_USE_CPU", "1")
    # The step runs its own bf16 autocast (cache disabled, capturable); Accelerate only places the model,
    # wraps it in DDP and gives ranks.
    from accelerate.utils import DDPCommunicationHookType, DistributedDataParallelKwargs

    hook = DDPCommunicationHookType.BF16 if cfg.step.ddp_bf16_grads else DDPCommunicationHookType.NO
    accelerator = Accelerator(
        mixed_precision="no",
        step_scheduler_with_optimizer=False,
        # The step compiles (and captures) itself: an accelerate config's dynamo setting must not wrap the
        # model a second time.
        dynamo_backend="no",
        kwargs_handlers=[DistributedDataParallelKwargs(comm_hook=hook)],
    )
    if accelerator.num_processes != launched:
        raise LaunchError(
            f"the launcher started {launched} processes (WORLD_SIZE) but Accelerate sees "
            f"{accelerator.num_processes}: on a machine without CUDA set ACCELERATE_USE_CPU=1 (or use "
            "`accelerate launch --cpu`); with GPUs, check CUDA_VISIBLE_DEVICES and the launcher's flags"
        )
    return accelerator


def log_margins(loss: Any, cfg: Config, counts: tuple[int, ...]) -> None:
    """A DBM run logs its class-margin range, and warns when the released code's normaliser (the last label's
    count) and the paper's (the rarest class's) would give margins that differ by more than 1%."""
    from losses import margin_norm_gap
    from losses.logit_maps import DBMargin

    logit_map = getattr(loss, "logit_map", None)
    if not isinstance(logit_map, DBMargin):
        return
    margins = logit_map.margins
    log.info(
        "DBM class margins (loss.margin_norm=%s): %.4f .. %.4f",
        cfg.loss.margin_norm,
        float(margins.min()),
        float(margins.max()),
    )
    gap = margin_norm_gap(counts, cfg.loss.tau)
    if gap > 0.01:
        log.warning(
            "loss.margin_norm: 'last' (the released code) gives every class a margin %.1f%% larger than "
            "'min' (the paper): the last label has %d images, the rarest class %d; this run uses %r",
            100 * gap,
            counts[-1],
            min(counts),
            cfg.loss.margin_norm,
        )


def _model(cfg: Config, loss: Any, meta: Any, device: Any) -> Any:
    """The kind of model the loss names (a classifier, or GML's student with the teacher of model.teacher:
    a missing or mismatched teacher is a CheckpointError here, before the run folder is written)."""
    from torch.nn.parallel import DistributedDataParallel

    from trainer.models import build_model, rank_identical_buffers

    model = build_model(
        cfg.model,
        loss,
        num_classes=meta.num_classes,
        class_counts=meta.class_counts,
        mean=cfg.data.mean,
        std=cfg.data.std,
    ).to(device)
    if cfg.model.sync_bn:
        from trainer.sync_bn import convert_sync_bn

        model = convert_sync_bn(model)  # before the optimizer: it keeps the parameters, swaps the modules
    # DDP broadcasts every buffer from rank 0 before each forward. That keeps the per-rank BatchNorm
    # statistics consistent (so `broadcast_buffers` stays on: turning it off is right only with SyncBN), but
    # buffers that every rank updates identically by construction (GML's queue: each rank enqueues every
    # rank's keys) would cross the network for nothing, 128-512 MB a step at ImageNet-LT / iNaturalist sizes:
    # DDP leaves the ones the model names out (also from its initial broadcast: they start equal, from the
    # seed or from the checkpoint every rank loads).
    if same_everywhere := rank_identical_buffers(model):
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, same_everywhere)
    return model


def build(cfg: Config, accelerator: Any) -> Any:
    """Every part of a run, for this process."""
    import torch
    from accelerate.utils import set_seed

    import losses
    from pipelines import make_loader
    from trainer.loop import Components
    from trainer.models import check_model
    from trainer.optim import build_optimizer
    from trainer.posthoc import eval_views
    from trainer.step import EvalStep, TrainStep

    device = accelerator.device
    where = dict(rank=accelerator.process_index, world_size=accelerator.num_processes, device=device)
    loss_class = losses.loss_class(cfg.loss.name)
    views = loss_class.num_views
    # The model the loss needs must fit the [model] section and the batch: checked before any data is read.
    check_model(cfg.model, loss_class, batch_size=cfg.data.batch_size, world_size=accelerator.num_processes)
    with contextlib.ExitStack() as on_error:  # a failure below closes the loaders opened so far
        train_loader = make_loader(cfg.data, "train", views=views, seed=cfg.run.seed, **where)
        on_error.callback(train_loader.close)
        eval_loader = make_loader(cfg.data, "eval", seed=cfg.run.seed, **where)
        on_error.callback(eval_loader.close)
        meta = train_loader.meta  # the class counts: the single source of truth for the loss and the metrics
        if eval_loader.meta.num_classes != meta.num_classes:
            raise ConfigError(
                f"data.eval={cfg.data.eval!r} has {eval_loader.meta.num_classes} classes but "
                f"data.train={cfg.data.train!r} has {meta.num_classes}"
            )
        if device.type == "cuda":
            # Shapes are static, so cuDNN's per-shape autotuning runs once. (TF32 matmuls stay off: the
            # cosine head is kept in fp32 on purpose, its raw cosines feed an arccos.)
            torch.backends.cudnn.benchmark = True

        loss = losses.build_loss(cfg.loss, meta.class_counts).to(device)
        log_margins(loss, cfg, meta.class_counts)
        set_seed(cfg.run.seed)  # the same initial weights (and GML's initial queue) on every process
        model = _model(cfg, loss, meta, device)
        optimizer = build_optimizer(model, cfg.optim)
        # Only the model goes through Accelerate (placement, DDP): the step drives the optimizer itself. DDP
        # broadcasts rank 0's buffers before every forward: NCL's queues then hold rank 0's keys only, the
        # other ranks' are dropped (trainer/ncl_model.py; the NCL recipes are single-process, as released).
        if device.type == "cuda" and accelerator.num_processes > 1 and cfg.step.mode == "graph":
            side = torch.cuda.Stream(device)
            with torch.cuda.stream(side):  # DDP built on a side stream so its buffers can join a capture
                model = accelerator.prepare(model)
            torch.cuda.current_stream(device).wait_stream(side)
        else:
            model = accelerator.prepare(model)
        # Each process draws its own augmentations from here on (the weights above are shared).
        set_seed(cfg.run.seed, device_specific=True)
        parts = Components(
            model=model,
            loss=loss,
            optimizer=optimizer,
            train_step=TrainStep(model, loss, optimizer, cfg.step),
            eval_step=EvalStep(
                model, cfg.step, meta.class_counts, views=eval_views(cfg.eval, model, loss, meta.class_counts)
            ),
            train_loader=train_loader,
            eval_loader=eval_loader,
            class_counts=meta.class_counts,
            global_batch=train_loader.batch_size * accelerator.num_processes,
        )
        on_error.pop_all()  # built: the caller closes the loaders (`parts.close()`)
    return parts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run one training job; return the results written to results.json.

    Everything that can fail on the user's input (the config and its overrides, the checkpoint a resume
    continues and whether the overrides fit it, the data) is checked before the run folder is written."""
    from trainer import stop

    # SIGTERM / SIGUSR1: every rank stops at the next host read point, checkpointed (trainer/stop.py).
    with stop.handlers():
        return _main(argv)


def _main(argv: list[str] | None) -> dict[str, Any]:
    args, overrides = parse_args(sys.argv[1:] if argv is None else list(argv))
    overrides = launcher_precision(overrides)
    from trainer import checkpoint, history, rundir, trackers
    from trainer.config import to_dict
    from trainer.environment import environment
    from trainer.runlock import RunLock

    state = None
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / rundir.CONFIG_FILE).is_file():
            raise rundir.RunDirError(f"--resume {run_dir}: no {rundir.CONFIG_FILE} there; not a run folder")
        cfg = load_config(run_dir / rundir.CONFIG_FILE, overrides)
        state = checkpoint.load_latest(run_dir)
        history.check_compatible(state, cfg)
        done = state["epoch"]
        if done > cfg.run.epochs or (done == cfg.run.epochs and (run_dir / rundir.RESULTS_FILE).is_file()):
            raise ConfigError(
                f"run.epochs={cfg.run.epochs}: the run in {run_dir} has already finished epoch {done}; "
                f"give --run.epochs=N with N > {done} to train it on"
            )
    else:
        cfg = load_config(args.config, overrides)
        run_dir = rundir.run_dir_for(cfg)
        if not cfg.run.overwrite:
            rundir.check_fresh(run_dir)

    trackers.check_installed(cfg.run)

    from trainer.loop import fit

    accelerator = make_accelerator(cfg)
    # One run per folder: rank 0 holds the lock for the run's life; every rank stops when it cannot.
    lock, refusal = RunLock(run_dir), [None]
    if accelerator.is_main_process:
        try:
            lock.acquire()
        except rundir.RunDirError as err:
            refusal = [str(err)]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(refusal)
    if refusal[0]:
        raise rundir.RunDirError(refusal[0])
    try:
        parts = build(cfg, accelerator)
    except BaseException:
        lock.forget_folder_if_unused()  # a run that could not start leaves no folder behind
        raise
    try:
        hist = (
            history.restore(accelerator, parts.model, parts.optimizer, state)
            if state is not None
            else history.History()
        )
        if accelerator.is_main_process:
            if cfg.run.overwrite and not args.resume:
                rundir.clear_run(run_dir)
            for path, size in rundir.clean_stale(run_dir):
                log.warning("removed %s (%.1f MB) left by an interrupted write", path, size / 2**20)
            rundir.start_run_dir(
                run_dir, cfg, environment(accelerator=accelerator), resumed=bool(args.resume)
            )
        rundir.check_shared(run_dir, accelerator)
        trackers.start(accelerator, cfg.run, run_dir, to_dict(cfg))
        accelerator.wait_for_everyone()
        return fit(cfg, accelerator, parts, run_dir, hist)
    finally:
        parts.close()
        accelerator.end_training()  # flushes and closes the trackers
        lock.release()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pipelines import DataError
    from trainer.checkpoint import CheckpointError
    from trainer.loop import DivergedError
    from trainer.rundir import RunDirError
    from trainer.stop import EXIT_CODE, Stopped

    try:
        main()
    except Stopped as err:  # checkpointed; a batch script requeues the job on this exit status
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"launch.py: {err}", file=sys.stderr, flush=True)
        sys.exit(EXIT_CODE)
    except (ConfigError, LaunchError, RunDirError, CheckpointError, DataError, DivergedError) as err:
        sys.exit(f"launch.py: {err}")
    except FileNotFoundError as err:  # a data path or a shard's index file: the message names it
        sys.exit(f"launch.py: {err}")
