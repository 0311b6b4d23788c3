"""What every bench tool writes: its figures and the environment that produced them, under one flag, `--json`.

The environment is `trainer.environment.environment`, the record a training run saves as env.json, so a
figure and a run say the same things about the machine. The file is written atomically: the suite
(tools/benchmark.py) takes an existing file as a finished section.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipelines.fileio import atomic_write_text
from trainer.environment import environment


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the figures and their environment here"
    )


def record(figures: dict[str, Any], device: Any = None) -> dict[str, Any]:
    """`figures` and the environment they were measured in on `device` (by default the CPU)."""
    return {**figures, "environment": environment(device)}


def write_json(path: Path | None, result: dict[str, Any]) -> None:
    """`result` (a `record`) as JSON at `path`; nothing when `path` is None (no --json given)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=1) + "\n", fsync=False)
