"""Experiment trackers (TensorBoard, Weights & Biases) through Accelerate's tracker API.

`run.trackers = ["tensorboard"]` (or "wandb") logs, at every epoch, the same scalars as metrics.jsonl, and at
every evaluation the per-class accuracy plot as an image. TensorBoard writes into `<run>/tensorboard/`; W&B
runs offline unless `run.wandb_mode = "online"` (a cluster node rarely has the network, and an offline run
syncs later with `wandb sync`). Both are optional dependencies (`pip install 'fastlt[trackers]'`): a run
that names one that is not installed stops before any work, saying what to install.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, RunConfig

TENSORBOARD_DIR = "tensorboard"


def _tensorboard(run: RunConfig, run_dir: Path) -> Any:
    from accelerate.tracking import TensorBoardTracker

    return TensorBoardTracker(TENSORBOARD_DIR, run_dir)


def _wandb(run: RunConfig, run_dir: Path) -> Any:
    from accelerate.tracking import WandBTracker

    return WandBTracker(run.wandb_project, name=run.name, mode=run.wandb_mode, dir=str(run_dir))


# name -> (the package it needs, the module its tracker imports, its builder)
TRACKERS: dict[str, tuple[str, str, Callable[[RunConfig, Path], Any]]] = {
    "tensorboard": ("tensorboard", "torch.utils.tensorboard", _tensorboard),
    "wandb": ("wandb", "wandb", _wandb),
}


def check_installed(run: RunConfig) -> None:
    """Every requested tracker's package is installed and imports (a broken install, e.g. a protobuf that
    does not fit, fails here, before the run folder exists); otherwise a one-line error saying what to do."""
    for name in run.trackers:
        package, module, _ = TRACKERS[name]
        if importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"run.trackers: {name!r} needs the {package} package, which is not installed: "
                f"pip install {package}  (or pip install 'fastlt[trackers]')"
            )
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - whatever a broken install raises, said in one line
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            why = f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"
            raise ConfigError(
                f"run.trackers: {name!r}: importing {module} fails ({why}); repair it (pip install "
                f"--force-reinstall {package}) or leave it out of run.trackers"
            ) from None


def start(accelerator: Any, run: RunConfig, run_dir: Path, config: dict[str, dict[str, Any]]) -> None:
    """Create the run's trackers on the main process and store the resolved config as their parameters."""
    if not run.trackers or not accelerator.is_main_process:
        return
    accelerator.log_with = [TRACKERS[name][2](run, run_dir) for name in run.trackers]
    flat = {f"{section}.{key}": _param(v) for section, values in config.items() for key, v in values.items()}
    accelerator.init_trackers(run.name, config=flat)


def _param(value: Any) -> Any:
    """Tracker parameters are scalars or strings: a tuple (crop scale, milestones) becomes its text."""
    return value if isinstance(value, bool | int | float | str) else str(value)


def log_epoch(accelerator: Any, record: dict[str, Any], epoch: int) -> None:
    """The numbers of one metrics.jsonl line (train/ and eval/ prefixed), at step = the epoch."""
    if not accelerator.trackers:
        return
    train = {"loss", "lr", "img_per_s", "train_top1", "train_time"}
    values = {
        f"{'train' if key in train else 'eval'}/{key}": float(value)
        for key, value in record.items()
        if key != "epoch" and isinstance(value, int | float) and not isinstance(value, bool)
    }
    accelerator.log(values, step=epoch)


def log_per_class(
    accelerator: Any, per_class: Sequence[float | None], class_counts: Sequence[int], epoch: int, title: str
) -> None:
    """The per-class accuracy plot of this evaluation, as an image."""
    if not accelerator.trackers:
        return
    from trainer.plot import figure_array, per_class_figure

    accuracy = [a if a is not None else 0.0 for a in per_class]
    image = figure_array(per_class_figure(accuracy, class_counts, title))
    for tracker in accelerator.trackers:
        tracker.log_images({"eval/per_class_accuracy": image[None]}, step=epoch, dataformats="NHWC")
