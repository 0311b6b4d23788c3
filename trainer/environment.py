"""What produced a figure: package versions, device, world size, machine, git commit and command line.

One record for a run's env.json and for every benchmark's output (tools/), so both say the same things.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

# Distributions whose versions make a figure reproducible; the DALI wheel's name carries its CUDA flavour.
_PACKAGES = ("torch", "torchvision", "accelerate", "ffcv", "numpy", "numba")
_DALI_PREFIX = "nvidia-dali"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _dali_version() -> str | None:
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith(_DALI_PREFIX) and "plugin" not in name:
            return f"{name}=={dist.version}"
    return None


def _git_commit(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def environment(device: Any = None, accelerator: Any = None) -> dict[str, Any]:
    """Versions, device, world size, machine and commit: everything needed to say what produced a figure
    (a run's env.json, every benchmark's output). `device` defaults to the accelerator's, else the CPU."""
    import torch

    if device is None:
        device = accelerator.device if accelerator is not None else torch.device("cpu")
    device = torch.device(device)
    world = accelerator.num_processes if accelerator is not None else 1
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    versions = {name: _version(name) for name in _PACKAGES}
    versions["dali"] = _dali_version()
    return {
        "python": sys.version.split()[0],
        "versions": versions,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "device": str(device),
        "device_name": device_name or platform.machine(),
        "world_size": world,
        "distributed_type": str(accelerator.distributed_type) if accelerator is not None else None,
        "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", world)),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "git": _git_commit(Path(__file__).resolve().parents[1]),
        "argv": sys.argv,
    }
