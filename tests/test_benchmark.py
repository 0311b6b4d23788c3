"""The benchmark suite runs end to end at tiny sizes, so none of its sections can rot unnoticed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_suite_writes_every_section(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.benchmark", "--tiny", "--device", "cpu", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    sections = {"loaders", "losses", "augment", "convert", "step", "e2e"}
    assert set(summary["sections"]) == sections
    assert summary["environment"]["versions"]["torch"].startswith("2.14.1")
    for section in sections:  # every figure carries the one environment record, for the device it ran on
        env = json.loads((out / f"{section}.json").read_text())["environment"]
        assert env["device"] == "cpu" and env["versions"] == summary["environment"]["versions"], section

    loaders = json.loads((out / "loaders.json").read_text())["results"]
    for name in ("fastlt_ffcv", "raw_ffcv", "fastlt_dali", "raw_dali", "torchvision"):
        assert loaders[name]["img_per_s"] > 0 and loaders[name]["images_per_epoch"] == 96
    assert loaders["ratio_ffcv"] > 0 and loaders["ratio_dali"] > 0

    losses = {r["loss"]: r for r in json.loads((out / "losses.json").read_text())["rows"]}
    assert set(losses) == {"ce", "dbm_ce", "fbl"} and all(r["ratio"] > 0 for r in losses.values())

    augment = json.loads((out / "augment.json").read_text())
    assert augment["ms"]["batched_autoaugment_cutout"] > 0 and augment["speedup_vs_torchvision_loop"] > 0

    convert = json.loads((out / "convert.json").read_text())
    assert all(convert["images_per_s"][k] > 0 for k in ("bare", "ffcv", "both"))

    (step,) = json.loads((out / "step.json").read_text())["rows"]
    assert (step["effective_mode"], step["batch"], step["resolution"]) == ("eager", 8, 32)
    assert step["img_per_s"] > 0 and math.isfinite(step["loss"]) and step["loss"] > 0

    e2e = json.loads((out / "e2e.json").read_text())["rows"]
    assert [r.get("backend", "synthetic") for r in e2e] == ["synthetic", "ffcv", "dali"]
    for row in e2e[1:]:  # trained on the loaders' converted images: a finite loss from real batches
        assert row["img_per_s"] > 0 and row["fraction_of_synthetic"] > 0 and math.isfinite(row["loss"])
