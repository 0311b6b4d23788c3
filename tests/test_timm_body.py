"""`model.arch = "timm:<name>"`: a timm network's features under fastlt's heads, trained for real."""

from __future__ import annotations

import pytest
import torch

import launch
from tests.helpers import RESUME, assert_same_run, interrupted_run, tiny_argv
from trainer import checkpoint, rundir
from trainer.archs import arch_for
from trainer.config import ConfigError, ModelConfig
from trainer.models import build_classifier, check_model

timm = pytest.importorskip("timm")

TINY = "timm:test_resnet"  # timm's own test network: 0.4 M parameters, BatchNorm, 96-d features


def _model(head="cosine", **cfg):
    return build_classifier(ModelConfig(arch=TINY, **cfg), 12, head, mean=(0.5,) * 3, std=(0.25,) * 3)


def test_heads_sit_on_the_timm_features():
    for head in ("linear", "cosine"):
        model = _model(head)
        out = model(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
        assert model.feature_dim == timm.create_model("test_resnet", num_classes=0).num_features == 96
        assert out.features.shape == (2, 96) and out.logits.shape == (2, 12)
    bcl = build_classifier(ModelConfig(arch=TINY), 12, "cosine", mean=(0.5,) * 3, std=(0.25,) * 3, views=3)
    assert bcl.head[0].in_features == 96


def test_config_errors_are_one_line():
    with pytest.raises(ValueError, match="model.arch: timm has no model 'resnet_nope'"):
        ModelConfig(arch="timm:resnet_nope")
    with pytest.raises(ValueError, match="model.arch: unknown value 'vit'; valid: .*'timm:<name>'"):
        ModelConfig(arch="vit")
    from losses import loss_class

    with pytest.raises(ConfigError, match="NCL's CIFAR experts: model.arch must be a CIFAR ResNet"):
        check_model(ModelConfig(arch=TINY), loss_class("ncl"), batch_size=16, world_size=1)


def test_missing_timm_names_the_extra(monkeypatch):
    from trainer import timm_body

    monkeypatch.setattr(timm_body, "available", lambda: False)
    with pytest.raises(
        ValueError, match=r"model.arch: timm archs need the timm package: pip install 'fastlt\[timm\]'"
    ):
        ModelConfig(arch=TINY)


def test_pretrained_weights_from_a_local_file(tmp_path):
    source = timm.create_model("test_resnet", num_classes=1000)  # a checkpoint with its own classifier
    file = tmp_path / "test_resnet.pth"
    torch.save(source.state_dict(), file)
    body = arch_for(TINY).build(str(file))
    for key, value in body.net.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    with pytest.raises(FileNotFoundError, match="model.pretrained: .*nothere.pth not found"):
        arch_for(TINY).build(str(tmp_path / "nothere.pth"))
    with pytest.raises(ValueError, match="holds weights of resnet18, but model.arch is timm:test_resnet"):
        arch_for(TINY).build("timm:resnet18.a1_in1k")


TIMM_ARGS = (f"--model.arch={TINY}", "--loss.name=dbm_ce", "--loss.scale=16")


@pytest.mark.parametrize("backend, mode", [("ffcv", "eager"), ("dali", "compile")])
def test_a_timm_model_trains_one_epoch(demo_converted, tmp_path, backend, mode):
    """The real TrainStep, channels_last, the cosine head in fp32, eager and compiled. The compiled run traces
    with aot_eager (Dynamo and AOTAutograd as on a GPU); CPU Inductor's code generation, which a GPU run does
    not use, takes a minute per model and fails on timm's ResNets fed channels_last batches in torch 2.14."""
    args = (*TIMM_ARGS, f"--step.mode={mode}", "--step.compile_backend=aot_eager")
    results = launch.main(tiny_argv(demo_converted, tmp_path, "timm", *args, backend=backend))
    assert results["epochs"] == 1 and results["final"]["top1"] is not None
    state = checkpoint.load_latest(tmp_path / "timm")
    assert state["config"]["model"]["arch"] == TINY and any(k.startswith("body.net.") for k in state["model"])


def test_resumed_timm_run_equals_an_uninterrupted_one(demo_converted, tmp_path, monkeypatch, one_thread):
    """RESUME's crop, flip, AutoAugment and Cutout on, as tests/test_resume.py for fastlt's own bodies."""
    args = (*TIMM_ARGS, *RESUME, "--run.eval_every=0")
    launch.main(tiny_argv(demo_converted, tmp_path, "straight", *args))
    interrupted_run(tiny_argv(demo_converted, tmp_path, "resumed", *args), monkeypatch)
    assert checkpoint.load_latest(tmp_path / "resumed")["epoch"] == 1
    launch.main(["--resume", str(tmp_path / "resumed")])
    a, _ = assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    assert a["epoch"] == 2
    losses = [[r["loss"] for r in rundir.read_metrics(tmp_path / n)] for n in ("straight", "resumed")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
