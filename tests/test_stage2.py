"""Decoupled classifier re-training (cRT): a stage-2 run on a stage-1 run's frozen body, end to end."""

from __future__ import annotations

import json

import pytest
import torch

import launch
from tests.helpers import tiny_argv
from trainer.checkpoint import CheckpointError, load_latest
from trainer.stage2 import stage1_body


@pytest.fixture(scope="module")
def stage1(demo_converted, tmp_path_factory):
    out = tmp_path_factory.mktemp("crt")
    launch.main(tiny_argv(demo_converted, out, "stage1", "--run.epochs=2", "--loss.name=ce", backend="dali"))
    return out


def body_and_buffers(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state["model"].items() if k.startswith("body.")}


def test_stage2_trains_the_classifier_on_a_frozen_body(stage1, demo_converted):
    argv = tiny_argv(
        demo_converted,
        stage1,
        "stage2",
        "--run.epochs=2",
        "--loss.name=ce",
        f"--model.init_from={stage1 / 'stage1'}",
        "--data.sampler=class_balanced",
        "--eval.la_tau=1.0",
        backend="dali",
    )
    results = launch.main(argv)
    before, after = load_latest(stage1 / "stage1"), load_latest(stage1 / "stage2")
    body_before, body_after = body_and_buffers(before), body_and_buffers(after)
    assert any("running_mean" in k for k in body_after) and set(body_before) == set(body_after)
    for key, value in body_before.items():  # weights and BatchNorm buffers, bit for bit
        assert torch.equal(value, body_after[key]), key
    assert not torch.equal(before["model"]["classifier.weight"], after["model"]["classifier.weight"])
    first = json.loads((stage1 / "stage1" / "results.json").read_text())["final"]
    print(f"\nstage 1 few {first['few']}, stage 2 few {results['final']['few']}")
    assert results["final"]["few"] is not None and first["few"] is not None
    assert set(results["final"]["la"]) == {"top1", "many", "medium", "few"}  # the post-hoc groups beside


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--model.init_from=/nowhere/stage1",), r"model\.init_from: .*nowhere/stage1 does not exist"),
        (("--model.arch=resnet8",), r"model\.init_from: .*holds a resnet_tiny, but model.arch is resnet8"),
    ],
)
def test_a_missing_or_mismatched_stage1_is_one_error_before_anything_is_written(
    stage1, demo_converted, extra, message
):
    argv = tiny_argv(demo_converted, stage1, "bad", f"--model.init_from={stage1 / 'stage1'}", *extra)
    with pytest.raises(CheckpointError, match=message):
        launch.main(argv)
    assert not (stage1 / "bad").exists()


def test_another_class_count_is_refused(stage1):
    with pytest.raises(CheckpointError, match="classifies 12 classes, but this run's data has 5"):
        stage1_body(stage1 / "stage1", arch="resnet_tiny", num_classes=5)


def test_posthoc_sweep_of_a_run_folder(stage1, tmp_path, capsys):
    """tools/posthoc.py: one pass, then a row per tau; tau = 0 of the logit adjustment is the plain argmax."""
    from tools import posthoc

    assert posthoc.main([str(stage1 / "stage1"), "--taus", "0,1,2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "posthoc.json").read_text())
    assert [(r["method"], r["tau"]) for r in rows] == [
        ("plain", 0.0),
        *(("la", t) for t in (0.0, 1.0, 2.0)),
        *(("tau_norm", t) for t in (0.0, 1.0, 2.0)),
    ]
    final = json.loads((stage1 / "stage1" / "results.json").read_text())["final"]
    for g in ("top1", "many", "medium", "few"):
        assert rows[0][g] == rows[1][g] == final[g]
    assert (tmp_path / "posthoc.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "posthoc.csv").read_text().splitlines()[0] == "method,tau,top1,many,medium,few"
    assert "tau_norm" in capsys.readouterr().out
