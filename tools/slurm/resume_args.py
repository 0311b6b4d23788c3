"""The launch.py arguments a requeued job runs with: `--resume RUN_DIR [overrides]` when the run folder its
arguments name holds a checkpoint and no results yet, its arguments unchanged otherwise.

    python tools/slurm/resume_args.py --config X.toml --run.name=a ...   # NUL-separated, for `mapfile -d ''`

train.sbatch asks it only when SLURM restarts the job (a first submission into a used folder must still be
refused by launch.py). The overrides go along: config.toml already holds them, and --config may not.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

import launch  # noqa: E402
from trainer import checkpoint, rundir  # noqa: E402
from trainer.recipe import load_config  # noqa: E402


def resume_args(argv: list[str]) -> list[str]:
    args, overrides = launch.parse_args(argv)
    if args.resume:
        return argv
    run_dir = rundir.run_dir_for(load_config(args.config, overrides))
    if (run_dir / rundir.RESULTS_FILE).exists() or not checkpoint.checkpoints(run_dir):
        return argv
    return ["--resume", str(run_dir), *overrides]


if __name__ == "__main__":
    sys.stdout.write("".join(f"{arg}\0" for arg in resume_args(sys.argv[1:])))
