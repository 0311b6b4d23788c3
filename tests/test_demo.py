"""tools/demo.py (`make demo`) end to end at smoke size: the real data, one epoch of a tiny model per loss.

That the demo is deterministic is shown where it is cheaper: its data is a pure function of the seed
(`tests/test_make_demo_data.py`), its loaders' batches, padded crop and flip included, are a function of
(seed, epoch) to the bit on both backends (`tests/test_loaders_determinism.py`), and two runs of the demo
recipe, one of them interrupted and resumed, end in the same place on both backends
(`tests/test_resume.py`)."""

from __future__ import annotations

import json
import tomllib

import pytest

from pipelines.config import data_path
from tools.demo import main

# Forwarded to every training run like any `--section.key=value`: one epoch of a tiny ResNet at 32 px.
SMOKE = [
    "--run.epochs=1",
    "--run.progress=false",
    "--model.arch=resnet_tiny",
    "--data.resolution=32",
    "--data.num_workers=1",
]


@pytest.mark.slow
def test_demo_converts_trains_every_loss_and_prints_their_table(tmp_path, capfd):
    out, runs = tmp_path / "demo", tmp_path / "runs"
    assert main(["--out", str(out), "--runs", str(runs), *SMOKE]) == 0
    printed = capfd.readouterr().out

    for split in ("train", "test"):  # both formats, so a later --backend dali finds its files
        assert data_path(out / "converted", split, "ffcv").is_file()
        assert any(data_path(out / "converted", split, "dali").glob("*.tar"))
    table = printed[printed.index("(final epoch, top-1 %)") :]
    for loss in ("ce", "dbm_ce", "dbm_bs"):  # the default comparison, on the default (DALI) backend
        run_dir = runs / f"demo_{loss}_dali"
        final = json.loads((run_dir / "results.json").read_text())["final"]
        config = tomllib.loads(
            (run_dir / "config.toml").read_text()
        )  # the demo recipe, smoke overrides on top
        assert (config["loss"]["name"], config["model"]["arch"], config["run"]["epochs"]) == (
            loss,
            "resnet_tiny",
            1,
        )
        row = next(line.split() for line in table.splitlines() if line.startswith(f"{loss} "))
        assert float(row[-1]) == pytest.approx(100 * final["top1"], abs=0.005)  # overall column
    assert "chance level 8.3%" in printed
    assert (runs / "demo_per_class.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
