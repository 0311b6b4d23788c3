"""The training loop as plain functions: `fit` runs epochs of `train_one_epoch` and `evaluate`.

`fit` receives the parts `build_parts` made and owns only the run's time line: per epoch it sets the loss's
and the loader's epoch, trains (the host reads values only every `run.log_every` steps), evaluates, appends
a line to metrics.jsonl and checkpoints, each on its own period and at the end. A stop signal
(trainer/stop.py) ends the run at the next log point with the epoch-start state checkpointed. Epochs are
numbered from 1 in everything written and from 0 in `set_epoch(epoch)`, as in the papers' code.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from pipelines.clock import duration
from trainer import checkpoint, history, posthoc, rundir, stop, trackers
from trainer.build import Parts
from trainer.config import Config, OptimConfig
from trainer.lead import HostLead, NoLead, host_lead
from trainer.models import rank_identical_buffers
from trainer.schedule import lr_at
from trainer.step import EvalStep, TrainStep, unwrap

log = logging.getLogger(__name__)


@dataclass
class Components(Parts):
    """What launch.py builds and `fit` drives: the `Parts` (model as prepared by Accelerate), the loaders."""

    train_loader: Any  # pipelines loader: iterable, len(), set_epoch(epoch), close()
    eval_loader: Any
    class_counts: tuple[int, ...]  # training images per class: results and plot
    global_batch: int  # images per optimisation step over all processes

    def close(self) -> None:
        for loader in (self.train_loader, self.eval_loader):
            close = getattr(loader, "close", None)
            if close is not None:
                close()


class DivergedError(RuntimeError):
    """The training loss stopped being finite: the run stops before anything non-finite is checkpointed."""

    def __init__(self, epoch: int, step: int, steps: int, lr: float, loss: float) -> None:
        self.epoch, self.step, self.lr, self.loss = epoch, step, lr, loss
        super().__init__(
            f"training diverged: the loss is {loss} at epoch {epoch + 1}, step {step}/{steps}, lr {lr:.4g}; "
            "the run stops here (checkpoints written before it are kept). Lower optim.lr or check the data"
        )


def train_one_epoch(
    step: TrainStep,
    loader: Iterable[Any],
    epoch: int,
    *,
    epochs: int,
    optim: OptimConfig,
    log_every: int,
    global_batch: int,
    progress: bool = False,
    log_lines: bool = False,
) -> dict[str, Any]:
    """One pass over `loader` (epoch counted from 0). Returns the mean loss, the last learning rate, the
    training top-1 of view 0 and images per second over all processes (timed between host syncs).
    `progress` shows a tqdm bar; `log_lines` prints a plain line at each log point instead, with the time
    left to the end of training (a batch job's log, where bar frames would pile up)."""
    steps = len(loader)  # type: ignore[arg-type]
    if steps == 0:
        raise ValueError(
            f"the training loader yields no full batch of {global_batch} images per epoch: "
            "lower data.batch_size (training batches drop the last partial batch)"
        )
    bar = tqdm(
        total=steps,
        desc=f"epoch {epoch + 1}/{epochs}",
        unit="step",
        leave=False,
        dynamic_ncols=True,
        disable=not progress,
    )
    loss_sum = correct = 0.0
    loss_steps = samples = 0
    lr = optim.lr
    lead = host_lead(step.device)  # see trainer/lead.py
    start = last_time = time.perf_counter()
    last_step = 0
    done = 0
    for i, (images, labels) in enumerate(loader):
        lead.wait()  # at most MAX_LEAD steps queued on the GPU: no loader buffer is reused while read
        lr = lr_at(optim, epoch, i, steps, epochs)
        step.set_lr(lr)  # an in-place device write: no sync, no recompile, no recapture
        step(images, labels)
        lead.record()
        done = i + 1
        bar.update(1)
        if done % log_every == 0 or done == steps:
            m = step.read_metrics()  # the only host sync (a collective on several processes)
            if m["loss"] is not None and not math.isfinite(m["loss"]):
                bar.close()
                raise DivergedError(epoch, done, steps, lr, m["loss"])  # every rank reads the same sum
            if done < steps and stop.agreed(step.device):  # a signal: every rank stops after this step
                bar.close()
                raise stop.StopRequested(done)
            now = time.perf_counter()
            if m["steps"]:
                loss_sum += m["loss"] * m["steps"]
                loss_steps += m["steps"]
            if m["top1"] is not None:
                correct += m["top1"] * m["samples"]
                samples += m["samples"]
            rate = (done - last_step) * global_batch / max(now - last_time, 1e-9)
            last_time, last_step = now, done
            loss = f"{m['loss']:.4f}" if m["loss"] is not None else "-"
            bar.set_postfix(loss=loss, lr=f"{lr:.3g}", img_s=f"{rate:.0f}")
            if log_lines and done < steps:
                left = steps - done + (epochs - epoch - 1) * steps  # training steps to the end of the run
                eta = duration(left * (now - start) / done)
                print(
                    f"  epoch {epoch + 1}/{epochs} step {done}/{steps}: loss {loss} lr {lr:.4g} "
                    f"{rate:.0f} img/s, ETA {eta} (training)",
                    flush=True,
                )
    bar.close()
    if done != steps:
        raise RuntimeError(
            f"the training loader gave {done} batches in epoch {epoch + 1}; len() said {steps}"
        )
    elapsed = time.perf_counter() - start
    return {
        "loss": loss_sum / loss_steps if loss_steps else None,
        "lr": lr,
        "train_top1": correct / samples if samples else None,
        "img_per_s": steps * global_batch / elapsed,
        "train_time": elapsed,
        "steps": steps,
    }


def broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics). DDP broadcasts them at the start of
    each training forward, so after the last step each rank holds its own update; evaluating with them would
    make each rank's share see a different model. Rank 0's are the ones the checkpoint saves, and the ones
    every rank gets at the next training step anyway, so a resumed run stays exact. The buffers every rank
    updates identically by construction (`rank_identical_buffers`: NCL's and GML's queues, which DDP is told
    to ignore too) are left out: equal already, and the largest by far."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    for buf in buffers_to_broadcast(unwrap(model)):
        dist.broadcast(buf.data, src=0)


def buffers_to_broadcast(module: nn.Module) -> list[torch.Tensor]:
    """`module`'s buffers that may differ between ranks after training: all but the rank-identical ones."""
    same = set(rank_identical_buffers(module))
    return [buf for name, buf in module.named_buffers() if name not in same]


def evaluate(step: EvalStep, loader: Iterable[Any], lead: HostLead | NoLead | None = None) -> dict[str, Any]:
    """Top-1, many/medium/few and per-class accuracy over the whole eval set, summed over processes. Each
    rank's loader holds a disjoint share of the samples (no padding), so every sample counts exactly once;
    `samples` in the result says how many were counted. The host's lead is bounded as in training (`lead`,
    by default the device's `host_lead`): a forward-only step is fast enough for a loader to outrun it."""
    lead = host_lead(step.device) if lead is None else lead
    start = time.perf_counter()
    for images, labels in loader:
        lead.wait()
        step(images, labels)
        lead.record()
    report = step.read_metrics()  # host sync + all-reduce of the per-class counts
    report["eval_time"] = time.perf_counter() - start
    return report


def _summary(rec: dict[str, Any]) -> str:
    text = f"epoch {rec['epoch']}: loss {rec['loss']:.4f} lr {rec['lr']:.4g} {rec['img_per_s']:.0f} img/s"
    if rec.get("top1") is not None:
        text += " | " + " ".join(f"{g} {_pct(rec.get(g))}" for g in history.GROUPS)
    return text + f" ({rec['time']:.1f} s)"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _stop(
    cfg: Config,
    accelerator: Any,
    run_dir: Path,
    hist: history.History,
    start_state: bytes | None,
    during: bool,
) -> None:
    """Write the epoch-start checkpoint if it is not on disk yet (rank 0), then raise `stop.Stopped`."""
    path = checkpoint.checkpoint_path(run_dir, hist.epoch)
    if accelerator.is_main_process and start_state is not None:
        checkpoint.save_checkpoint(path, start_state)
        checkpoint.prune(run_dir, cfg.run.keep_checkpoints)
    accelerator.wait_for_everyone()
    raise stop.Stopped(run_dir, hist.epoch, cfg.run.epochs, path, during)


def fit(
    cfg: Config, accelerator: Any, parts: Components, run_dir: Path, hist: history.History
) -> dict[str, Any]:
    """Train from where `hist` stands (a fresh `History`, or the one a checkpoint restored) to
    `cfg.run.epochs`; return the results written to results.json (best and final evaluation). A loss that
    stops being finite ends the run with `DivergedError`, recorded in metrics.jsonl, checkpointing nothing."""
    run = cfg.run
    main = accelerator.is_main_process
    epochs = run.epochs
    if main:
        rundir.write_metrics(run_dir, hist.records)  # drops lines written after the checkpoint
    if main:  # set by OMP_NUM_THREADS or torch's default; the loaders, built by now, leave it as it was
        log.info("torch runs CPU ops on %d threads", torch.get_num_threads())
    if hist.epoch:
        accelerator.print(f"resuming {run_dir} after epoch {hist.epoch} of {epochs}", flush=True)
    # A run stopped by a signal saves the state at the start of its epoch (trainer/stop.py): the checkpoint
    # of the last finished epoch, encoded in memory when that epoch wrote none (a resume wrote its own).
    on_disk, start_state = (hist.epoch if hist.epoch else None), None
    bar = main and run.progress and sys.stdout.isatty()  # a batch job's log gets plain lines instead
    for images, labels in parts.train_loader.synthetic_batches(len(parts.class_counts)):
        parts.train_step.prepare(images, labels)  # compile / capture before the loaders' threads start
    for epoch in range(hist.epoch, epochs):
        if on_disk != hist.epoch:
            start_state = history.snapshot(cfg, accelerator, parts.model, parts.optimizer, hist)
        if stop.agreed(accelerator.device):
            _stop(cfg, accelerator, run_dir, hist, start_state, during=False)
        start = time.perf_counter()
        parts.loss.set_epoch(epoch, epochs)
        parts.train_loader.set_epoch(epoch)
        rec: dict[str, Any] = {"epoch": epoch + 1}
        try:
            rec.update(
                train_one_epoch(
                    parts.train_step,
                    parts.train_loader,
                    epoch,
                    epochs=epochs,
                    optim=cfg.optim,
                    log_every=run.log_every,
                    global_batch=parts.global_batch,
                    progress=bar,
                    log_lines=main and not bar,
                )
            )
        except stop.StopRequested:
            _stop(cfg, accelerator, run_dir, hist, start_state, during=True)
        except DivergedError as err:
            rec.update(loss=err.loss, lr=err.lr, diverged_at_step=err.step, time=time.perf_counter() - start)
            if main:
                rundir.append_metrics(run_dir, rec)
            raise
        last = epoch + 1 == epochs
        if last or (run.eval_every > 0 and (epoch + 1) % run.eval_every == 0):
            broadcast_buffers(parts.model)
            report = evaluate(parts.eval_step, parts.eval_loader)
            report["epoch"] = epoch + 1
            hist.last_eval = report
            title = f"{run.name}: {cfg.loss.name}, {cfg.model.arch}, epoch {epoch + 1}"
            trackers.log_per_class(accelerator, report["per_class"], parts.class_counts, epoch + 1, title)
            if history.better(report, hist.best):
                hist.best = {"epoch": epoch + 1, **history.groups(report)}
            rec.update(history.groups(report), eval_samples=report["samples"], eval_time=report["eval_time"])
            rec.update(posthoc.flat(report))  # the [eval] section's adjusted predictions, if any
        else:
            rec.update(dict.fromkeys(history.GROUPS))
        rec["time"] = time.perf_counter() - start
        hist.epoch = epoch + 1
        hist.records.append(rec)
        if main:
            rundir.append_metrics(run_dir, rec)
        trackers.log_epoch(accelerator, rec, epoch + 1)
        accelerator.print(_summary(rec), flush=True)
        if last or (run.checkpoint_every > 0 and (epoch + 1) % run.checkpoint_every == 0):
            history.save(cfg, accelerator, parts.model, parts.optimizer, run_dir, hist)
            on_disk, start_state = hist.epoch, None
    metas = {
        split: loader.meta for split, loader in (("train", parts.train_loader), ("eval", parts.eval_loader))
    }
    results = history.results(cfg, parts.class_counts, hist, metas)
    if main:
        history.finish(cfg, run_dir, parts.class_counts, results)
    accelerator.wait_for_everyone()
    return results
