"""Session fixtures shared by the whole suite: a small generated long-tailed image set and its conversion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tools.make_demo_data import make_demo_data

ROOT = Path(__file__).resolve().parents[1]

# Small enough to convert and read in seconds, long-tailed enough to have many/medium/few classes (60..6).
DEMO_KW = dict(num_classes=12, n_max=60, imbalance=10.0, test_per_class=6, size=(32, 32), seed=0)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: on a CPU machine they are reported as skipped, never silently passed."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run `make test-gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_images")
    make_demo_data(out, workers=1, **DEMO_KW)
    return out


def convert(
    images: Path, out: Path, split: str = "train", *extra: str, formats: str = "ffcv,dali", split_file=None
) -> None:
    """Run the contract CLI, exactly as a user would: `<images>/<split>.txt` (or `split_file`) into `out`."""
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "convert_datasets.py"),
        "imagenet_lt",
        "--root",
        str(images),
        "--split-file",
        str(split_file or images / f"{split}.txt"),
        "--out",
        str(out),
        "--formats",
        formats,
        "--workers",
        "1",
        *extra,
    ]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="session")
def convert_cli():
    """`convert(images, out, split, *extra, formats=..., split_file=...)` for fixtures in other modules."""
    return convert


@pytest.fixture(scope="session")
def demo_converted(demo_images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_converted")
    for split in ("train", "test"):
        convert(demo_images, out, split)
    return out


@pytest.fixture
def one_thread():
    """One intra-op thread from the first step on, for runs compared bitwise-close (resume tests): earlier
    tests may leave another count behind, and a different reduction order in the first steps is enough to
    break the agreement after two epochs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
