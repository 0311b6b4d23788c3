"""fastlt's entry point and composition root: argv -> Config -> Accelerator -> parts -> trainer.loop.fit.

    python launch.py --config configs/demo.toml [--section.key=value ...]
    python launch.py --resume runs/NAME [--section.key=value ...]
    accelerate launch [--num_machines M --machine_rank R --main_process_ip IP ...] launch.py --config X.toml
    torchrun --nproc_per_node N launch.py --config X.toml

Each process loads its own shard (Accelerate's `prepare` does not shard FFCV or DALI loaders):
`data.batch_size` is global, so each of N processes loads batch_size / N.
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
        # A captured DDP step cannot have NCCL's watchdog tear down the communicator mid-graph.
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


def build(cfg: Config, accelerator: Any) -> Any:
    """Every part of a run, for this process: the two loaders and what `trainer.build.build_parts` makes."""
    import losses
    from pipelines import make_loader
    from trainer.build import build_parts, check_parts
    from trainer.loop import Components
    from trainer.models import training_views

    device = accelerator.device
    where = dict(rank=accelerator.process_index, world_size=accelerator.num_processes, device=device)
    check_parts(cfg, world_size=accelerator.num_processes)  # before any data is read
    # The loss's views and their recipe (or a two-view BatchNorm teacher's) feed the training loader.
    views, view_recipe = training_views(cfg.model, losses.loss_class(cfg.loss.name))
    with contextlib.ExitStack() as on_error:  # a failure below closes the loaders opened so far
        train_loader = make_loader(
            cfg.data, "train", views=views, view_recipe=view_recipe, seed=cfg.run.seed, **where
        )
        on_error.callback(train_loader.close)
        eval_loader = make_loader(cfg.data, "eval", seed=cfg.run.seed, **where)
        on_error.callback(eval_loader.close)
        meta = train_loader.meta  # the class counts: the single source of truth for the loss and the metrics
        if eval_loader.meta.num_classes != meta.num_classes:
            raise ConfigError(
                f"data.eval={cfg.data.eval!r} has {eval_loader.meta.num_classes} classes but "
                f"data.train={cfg.data.train!r} has {meta.num_classes}"
            )
        # Only the model goes through Accelerate (placement, DDP): the step drives the optimizer itself.
        parts = build_parts(cfg, meta, prepare=accelerator.prepare, **where)
        components = Components(
            **vars(parts),
            train_loader=train_loader,
            eval_loader=eval_loader,
            class_counts=meta.class_counts,
            global_batch=train_loader.batch_size * accelerator.num_processes,
        )
        on_error.pop_all()  # built: the caller closes the loaders (`components.close()`)
    return components


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
    from trainer import checkpoint, history, rundir, teacher, trackers
    from trainer.config import to_dict
    from trainer.environment import environment
    from trainer.runlock import RunLock
    from trainer.step import unwrap

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
        # A resumed GML student rebuilds its teacher from its own checkpoint (trainer/teacher.py)
        parts = build(teacher.resume_config(cfg, state) if state else cfg, accelerator)
    except BaseException:
        lock.forget_folder_if_unused()  # a run that could not start leaves no folder behind
        raise
    cfg = teacher.pinned(cfg, unwrap(parts.model), state)  # the config recorded names the teacher file used
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
        rundir.check_shared(run_dir, accelerator, timeout=cfg.run.shared_check_s)
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
    from trainer.resnet_imagenet import PretrainedError
    from trainer.rundir import RunDirError
    from trainer.stop import EXIT_CODE, Stopped

    try:
        main()
    except Stopped as err:  # checkpointed; a batch script requeues the job on this exit status
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"launch.py: {err}", file=sys.stderr, flush=True)
        sys.exit(EXIT_CODE)
    except (
        ConfigError,
        LaunchError,
        RunDirError,
        CheckpointError,
        DataError,
        DivergedError,
        PretrainedError,
    ) as err:
        sys.exit(f"launch.py: {err}")
    except FileNotFoundError as err:  # a data path or a shard's index file: the message names it
        sys.exit(f"launch.py: {err}")
