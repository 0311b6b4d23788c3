"""The benchmark suite runs end to end at tiny sizes, so none of its sections can rot unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_suite_writes_every_section(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "tools/benchmark.py", "--tiny", "--device", "cpu", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["sections"]) == {"loaders", "losses", "augment", "convert", "step", "e2e"}
    assert summary["environment"]["torch"].startswith("2.14.1")

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

    (step,) = json.loads((out / "step.json").read_text())
    assert step["img_per_s"] > 0 and step["vs_eager"] == 1.0

    e2e = json.loads((out / "e2e.json").read_text())
    assert [r.get("backend", "synthetic") for r in e2e] == ["synthetic", "ffcv", "dali"]
    for row in e2e[1:]:
        assert row["img_per_s"] > 0 and row["fraction_of_synthetic"] > 0
