"""A run's history across stops: what a checkpoint carries besides the tensors, and what a run reports.

`fit` (trainer/loop.py) keeps one `History`, saves it with the model and optimizer every few epochs
(`save`), gets it back on resume (`restore`), and turns it into results.json and the per-class plot
(`results`, `finish`). A resume never changes the shape of the model it loads (`check_compatible`).
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from trainer import checkpoint as ckpt
from trainer import posthoc, rundir
from trainer.config import Config, to_dict
from trainer.models import MODELS
from trainer.optim import SGD
from trainer.plot import plot_per_class_accuracy
from trainer.rng import rng_state, set_rng_state
from trainer.step import unwrap
from trainer.teacher import record_of

log = logging.getLogger(__name__)

GROUPS = ("top1", "many", "medium", "few")


@dataclass
class History:
    """What a checkpoint carries besides the tensors: where the run stands and what it has measured."""

    epoch: int = 0  # epochs finished
    best: dict[str, Any] | None = None  # best evaluation so far: epoch and groups
    last_eval: dict[str, Any] | None = None  # the latest full evaluation report (per-class accuracy included)
    records: list[dict[str, Any]] = field(default_factory=list)  # the metrics.jsonl lines


def groups(report: dict[str, Any]) -> dict[str, Any]:
    return {g: report.get(g) for g in GROUPS}


def better(report: dict[str, Any], best: dict[str, Any] | None) -> bool:
    return report.get("top1") is not None and (best is None or report["top1"] > best["top1"])


def save(
    cfg: Config, accelerator: Any, model: nn.Module, optimizer: SGD, run_dir: Path, hist: History
) -> None:
    """Write the checkpoint of the epochs finished so far and drop the oldest beyond `run.keep_checkpoints`
    (a collective: every rank's RNG states are gathered; rank 0 writes)."""
    encoded = snapshot(cfg, accelerator, model, optimizer, hist)
    if accelerator.is_main_process:
        ckpt.save_checkpoint(ckpt.checkpoint_path(run_dir, hist.epoch), encoded)
        ckpt.prune(run_dir, cfg.run.keep_checkpoints)
    accelerator.wait_for_everyone()


def snapshot(cfg: Config, accelerator: Any, model: nn.Module, optimizer: SGD, hist: History) -> bytes | None:
    """The checkpoint of the epochs finished so far, as file bytes on rank 0 (None elsewhere): what `save`
    writes, or what a stopped run writes later (a collective: every rank's RNG states are gathered)."""
    from accelerate.utils import gather_object

    rng = gather_object([rng_state()])  # every rank's generators, in rank order (a collective)
    if not accelerator.is_main_process:
        return None
    return ckpt.encode(
        {
            "epoch": hist.epoch,
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng,
            "best": hist.best,
            "last_eval": hist.last_eval,
            "history": hist.records,
            "world_size": accelerator.num_processes,
            "config": to_dict(cfg),
            **({"teacher": record} if (record := record_of(unwrap(model))) else {}),
        }
    )


# Keys whose change makes a checkpoint's model or loss another shape than the run's, or its queues another
# layout: the body, every model kind's own keys (trainer.models.MODELS) and the loss (its head and views).
# Every kind's keys, not only the run's: a resume refuses them by name whichever loss the run trains.
SHAPE_KEYS = (
    ("model", "arch"),
    *(("model", key) for key in dict.fromkeys(k for kind in MODELS.values() for k in kind.shape_keys)),
    ("loss", "name"),
)


def check_compatible(state: dict[str, Any], cfg: Config) -> None:
    """Refuse, before anything is built or written, a resume whose overrides change the model or the loss's
    shape (the head a loss needs, its number of views)."""
    saved = state.get("config", {})
    new = to_dict(cfg)
    for section, key in SHAPE_KEYS:
        before, after = saved.get(section, {}).get(key), new[section][key]
        if before is not None and before != after:
            raise ckpt.CheckpointError(
                f"--{section}.{key}={after} would change the model the checkpoint {state.get('path')} holds "
                f"({section}.{key} = {before!r}); a resumed run keeps it: start a new run instead"
            )


def restore(accelerator: Any, model: nn.Module, optimizer: SGD, state: dict[str, Any]) -> History:
    """Load a checkpoint into the run's model and optimizer (in place: a captured step graph stays valid)
    and this rank's generators; return the history it carries."""
    try:
        unwrap(model).load_state_dict(state["model"])  # copies: parameters keep their addresses
        optimizer.load_state_dict(state["optimizer"])  # trainer.optim.SGD: so do its state tensors
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()
        detail = next((line.strip() for line in first[1:] if line.strip()), first[0] if first else "")
        raise ckpt.CheckpointError(
            f"{state.get('path')}: does not fit this run's model or optimizer ({detail})"
        ) from None
    rng = state["rng"]
    if len(rng) == accelerator.num_processes:
        set_rng_state(rng[accelerator.process_index])
    else:
        log.warning(
            "checkpoint written by %d processes, resumed on %d: the random streams (augmentation, data "
            "order) differ from an uninterrupted run",
            len(rng),
            accelerator.num_processes,
        )
        set_rng_state(rng[accelerator.process_index % len(rng)])
    return History(state["epoch"], state["best"], state["last_eval"], list(state["history"]))


def results(
    cfg: Config, class_counts: tuple[int, ...], hist: History, metas: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What results.json holds: the best and the final evaluation, counts, time and throughput, and per
    split (`metas`: each loader's meta) the damaged samples data.skip_corrupt left out of it."""
    records = hist.records
    final = hist.last_eval or {}
    rates = [r["img_per_s"] for r in records if r.get("img_per_s")]
    return {
        "name": cfg.run.name,
        "epochs": hist.epoch,
        "best": hist.best,
        "final": {
            "epoch": final.get("epoch"),
            **groups(final),
            "per_class": final.get("per_class"),
            **posthoc.nested(final),  # the [eval] section's adjusted groups beside the plain ones
        },
        "eval_samples": final.get("samples"),
        "num_classes": len(class_counts),
        "class_counts": list(class_counts),
        "shot_classes": {g: final.get(f"{g}_classes") for g in ("many", "medium", "few")},
        "train_time_s": sum(r.get("train_time", 0.0) for r in records),
        "img_per_s_median": statistics.median(rates) if rates else None,
        "left_out": {split: left_out(meta) for split, meta in (metas or {}).items()},
    }


def left_out(meta: Any) -> int:
    """How many samples of a loader's data data.skip_corrupt left out (it trains or evaluates on fewer)."""
    from pipelines.sample_check import SKIP_CORRUPT

    return sum(1 for s in meta.skipped if s.get("by") == SKIP_CORRUPT)


def finish(cfg: Config, run_dir: Path, class_counts: tuple[int, ...], results: dict[str, Any]) -> None:
    """results.json and the per-class accuracy plot (main process only)."""
    rundir.write_results(run_dir, results)
    per_class = results["final"].get("per_class")
    if per_class:
        acc = [a if a is not None else 0.0 for a in per_class]
        title = (
            f"{cfg.run.name}: {cfg.loss.name}, {cfg.model.arch}, epoch {results['final']['epoch']}, "
            f"top-1 {100 * results['final']['top1']:.2f}%"
        )
        plot_per_class_accuracy(run_dir / rundir.PLOT_FILE, acc, class_counts, title)
