"""The teacher of a two-stage run (trainer/teacher.py) and the student `build_model` makes from it: loading
from a run folder or a checkpoint file, the one-line errors naming model.teacher and the file, and the
dispatch on the loss's `model`; `model.bn_views`, the two-view BatchNorm of GML's large-scale teacher."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from losses import build_loss, loss_class
from tests.test_gml_model import COUNTS, MEAN, STD, batch, make_student, tiny
from trainer.checkpoint import CheckpointError, checkpoint_path, load_checkpoint, save_checkpoint
from trainer.config import Config, ConfigError, DataConfig, LossConfig, ModelConfig, RunConfig, to_dict
from trainer.gml_model import GMLStudent
from trainer.models import build_classifier, build_model, check_model, rank_identical_buffers, training_views
from trainer.teacher import load_teacher


def save_teacher_run(run_dir: Path, *, arch="resnet_tiny", num_classes=4, loss="dbm_bs", epoch=1, epochs=1):
    cfg = Config(
        run=RunConfig(name=run_dir.name, epochs=epochs),
        data=DataConfig(mean=MEAN, std=STD),
        model=ModelConfig(arch=arch, channels_last=False),
        loss=LossConfig(name=loss, scale=30.0, max_margin=0.0),
    )
    torch.manual_seed(5)
    model = build_classifier(
        cfg.model, num_classes, "linear" if loss == "ce" else "cosine", mean=MEAN, std=STD
    )
    save_checkpoint(
        checkpoint_path(run_dir, epoch), {"epoch": epoch, "model": model.state_dict(), "config": to_dict(cfg)}
    )
    return model


def test_load_teacher_from_a_run_folder_or_a_checkpoint(tmp_path):
    run = tmp_path / "runs" / "teacher"
    original = save_teacher_run(run).eval()
    images = batch([0, 1])[0]
    for source in (run, str(run), checkpoint_path(run, 1)):
        teacher = load_teacher(source, num_classes=4, arch="resnet_tiny")
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        got, want = teacher(images), original(images)
        assert torch.equal(got.features, want.features) and torch.equal(got.logits, want.logits)
    # A linear-head teacher (its class count read from the other axis); and one built into a student.
    linear = tmp_path / "runs" / "linear"
    save_teacher_run(linear, loss="ce", num_classes=4)
    assert isinstance(load_teacher(linear, num_classes=4).classifier, nn.Linear)
    student = GMLStudent(tiny(), load_teacher(run, num_classes=4), COUNTS, queue_size=16, embed_dim=8)
    assert not student.train().teacher.training


def test_load_teacher_errors_name_the_file(tmp_path, caplog):
    with pytest.raises(CheckpointError, match="model.teacher is empty"):
        load_teacher("", num_classes=4)
    run = tmp_path / "runs" / "teacher"
    with pytest.raises(CheckpointError, match=r"model\.teacher: .*runs/teacher does not exist"):
        load_teacher(run, num_classes=4)
    run.mkdir(parents=True)  # a run folder without a checkpoint yet
    with pytest.raises(CheckpointError, match=r"model\.teacher: no checkpoint in .*teacher/checkpoints"):
        load_teacher(run, num_classes=4)
    save_teacher_run(run, epoch=1, epochs=3)
    with pytest.raises(
        CheckpointError, match=r"epoch-0001\.pt holds a resnet_tiny, but model\.teacher_arch is resnet56"
    ):
        load_teacher(run, num_classes=4, arch="resnet56")
    with pytest.raises(
        CheckpointError, match=r"epoch-0001\.pt classifies 4 classes, but this run's data has 10"
    ):
        load_teacher(run, num_classes=10)
    with caplog.at_level(logging.WARNING, logger="trainer.teacher"):
        load_teacher(run, num_classes=4)
    assert "epoch 1 of 3" in caplog.text
    linear = tmp_path / "runs" / "linear"
    save_teacher_run(linear, loss="ce")
    with pytest.raises(CheckpointError, match=r"epoch-0001\.pt has a linear head .* loss\.gml_alpha=0"):
        load_teacher(linear, num_classes=4, head="cosine")
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(1)}, junk)
    with pytest.raises(CheckpointError, match="junk.pt is not a fastlt checkpoint"):
        load_teacher(junk, num_classes=4)
    # A student run is no teacher (its checkpoint has the student's config and state).
    student_run = tmp_path / "runs" / "student"
    cfg = Config(model=ModelConfig(arch="resnet_tiny"), loss=LossConfig(name="dbm_gml"))
    save_checkpoint(
        checkpoint_path(student_run, 1),
        {"epoch": 1, "model": make_student().state_dict(), "config": to_dict(cfg)},
    )
    with pytest.raises(CheckpointError, match=r"is a gml_student run \(loss dbm_gml\): a teacher must be a"):
        load_teacher(student_run, num_classes=4)


def test_build_model_makes_the_student_the_loss_names(tmp_path):
    """`build_model` dispatches on the loss's `model`: dbm_gml gets the MoCo student with the teacher of
    `model.teacher` and the queue of the model config; a classifier loss gets a classifier."""
    run = tmp_path / "teacher"
    original = save_teacher_run(run).eval()
    cfg = ModelConfig(
        arch="resnet_tiny",
        channels_last=False,
        teacher=str(run),
        teacher_arch="resnet_tiny",
        gml_queue_size=24,
        gml_base_k=3,
        gml_embed_dim=6,
        gml_temperature=0.2,
    )
    where = dict(num_classes=4, class_counts=COUNTS, mean=MEAN, std=STD)
    loss = build_loss("dbm_gml", COUNTS)
    model = build_model(cfg, loss, **where)
    assert isinstance(model, GMLStudent) and model.distill
    assert model.queue.keys.shape == (25, 32) and model.queue.sizes.min() >= 3  # K + the spare row, d_t
    assert model.embed_q[-1].out_features == 6 and model.log_temperature.exp().item() == pytest.approx(0.2)
    assert not getattr(model.student, "bcl", True)  # one view: no BCL heads on the student
    images = batch([0, 1])[0]
    torch.testing.assert_close(model.teacher(images).logits, original(images).logits)
    assert not build_model(cfg, build_loss("gml", COUNTS, gml_alpha=0.0), **where).distill
    classifier = build_model(cfg, build_loss("dbm_bcl", COUNTS), **where)
    assert not isinstance(classifier, GMLStudent) and classifier.bcl  # 3 views: BCL's heads
    # What DDP need not broadcast (trainer.build): every rank updates them identically.
    assert sorted(rank_identical_buffers(model)) == ["queue.ids", "queue.keys", "queue.pointers", "steps"]
    assert set(rank_identical_buffers(model)) <= set(dict(model.named_buffers()))
    assert rank_identical_buffers(classifier) == []
    with pytest.raises(CheckpointError, match="model.teacher is empty"):
        build_model(ModelConfig(arch="resnet_tiny"), loss, **where)
    with pytest.raises(ConfigError, match=r"model.gml_queue_size=10: .* 4 classes, at least 12"):
        build_model(dataclasses.replace(cfg, gml_queue_size=10), loss, **where)
    with pytest.raises(CheckpointError, match="model.teacher_arch is resnet8"):
        build_model(dataclasses.replace(cfg, teacher_arch="resnet8"), loss, **where)


def test_bn_views_classifier_classifies_view_0_with_batch_norm_over_every_view():
    """`model.bn_views = 2` (GML's ImageNet-LT teacher, trained inside a MoCo model whose encoder normalises
    [cls; q]): the body encodes both views in one pass, the loss gets view 0's logits only, and the running
    statistics are those of all 2N rows; evaluation is the plain one-view classifier."""
    cfg = ModelConfig(arch="resnet_tiny", channels_last=False, bn_views=2)
    loss = build_loss("dbm_bs", COUNTS, scale=30.0, max_margin=0.0)
    where = dict(num_classes=4, class_counts=COUNTS, mean=MEAN, std=STD)
    torch.manual_seed(0)
    model = build_model(cfg, loss, **where).train()
    torch.manual_seed(0)
    plain = build_model(dataclasses.replace(cfg, bn_views=1), loss, **where).train()
    images = batch([0, 1, 2, 3])[0][:8]  # [v0; v1] of 4 images
    out, whole = model(images), plain(images)
    assert out.logits.shape == (4, 4) and out.features.shape[0] == 4
    torch.testing.assert_close(out.logits, whole.logits[:4], rtol=0, atol=0)
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    plain_bn = [m for m in plain.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn and len(bn) == len(plain_bn)
    for a, b in zip(bn, plain_bn, strict=True):  # running statistics of all 2N rows
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
    assert not torch.allclose(out.logits, plain(images[:4]).logits)  # BatchNorm saw view 1 too
    assert not getattr(model, "bcl", True)  # no BCL heads: no parameter more than the plain model
    assert model.state_dict().keys() == plain.state_dict().keys()
    with pytest.raises(ValueError, match="stacks 2 views, got 3 images"):
        model(images[:3])
    assert model.eval()(images).logits.shape == (8, 4)  # evaluation classifies every row


def test_bn_views_needs_a_classifier_run_with_a_one_view_loss():
    two = ModelConfig(arch="resnet_tiny", bn_views=2)
    where = dict(batch_size=16, world_size=1)
    check_model(two, loss_class("dbm_bs"), **where)
    assert training_views(two, loss_class("dbm_bs")) == (2, "classification")
    assert training_views(ModelConfig(), loss_class("dbm_bs")) == (1, "contrastive")
    assert training_views(ModelConfig(), loss_class("dbm_gml")) == (3, "classification")
    assert training_views(ModelConfig(), loss_class("bcl")) == (3, "contrastive")
    for name, kind in (("dbm_bcl", "classifier on 3 view"), ("dbm_gml", "gml_student on 3 view")):
        with pytest.raises(ConfigError, match=rf"model.bn_views=2: .*loss.name='{name}' trains a {kind}"):
            check_model(two, loss_class(name), **where)
    with pytest.raises(ValueError, match=r"model.bn_views: must be >= 1"):
        ModelConfig(bn_views=0)


def test_a_student_checkpoint_holds_its_teacher_and_names_the_file(tmp_path):
    """A resumed student must not need the teacher's run folder: its checkpoint gives the teacher's weights
    and config (`load_teacher` on it, what `resume_config` points a resume at), and the config it records
    names the teacher file actually used (`pinned`), not the folder."""
    from trainer import history
    from trainer.teacher import pinned, record_of, resume_config

    run = tmp_path / "runs" / "teacher"
    original = save_teacher_run(run, epoch=3, epochs=3).eval()
    model_cfg = ModelConfig(arch="resnet_tiny", channels_last=False, teacher=str(run), gml_queue_size=16)
    cfg = Config(model=model_cfg, loss=LossConfig(name="dbm_gml"))
    student = build_model(
        model_cfg, build_loss("dbm_gml", COUNTS), num_classes=4, class_counts=COUNTS, mean=MEAN, std=STD
    )
    teacher_file = str(checkpoint_path(run, 3))
    assert record_of(student)["path"] == teacher_file and record_of(student)["epoch"] == 3
    recorded = pinned(cfg, student)
    assert recorded.model.teacher == teacher_file and pinned(recorded, student) is recorded

    class One:  # what `snapshot` needs of an Accelerator: one process
        is_main_process, num_processes = True, 1

    own = checkpoint_path(tmp_path / "runs" / "student", 1)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    save_checkpoint(own, history.snapshot(recorded, One(), student, optimizer, history.History(1)))
    state = load_checkpoint(own)
    assert state["teacher"]["path"] == teacher_file
    shutil.rmtree(run)  # the teacher's folder is gone (moved, cleaned up)
    state["path"] = str(own)
    resumed = resume_config(recorded, state)
    assert resumed.model.teacher == str(own) and resume_config(Config(), state).model.teacher == ""
    again = build_model(
        resumed.model, build_loss("dbm_gml", COUNTS), num_classes=4, class_counts=COUNTS, mean=MEAN, std=STD
    )
    images = batch([0, 1])[0]
    torch.testing.assert_close(again.teacher(images).logits, original(images).logits)
    assert record_of(again)["path"] == teacher_file  # still the true teacher, not the student's file
    assert pinned(recorded, again) is recorded
    older = {"path": str(own), "model": {}}  # a checkpoint from before students recorded their teacher
    assert pinned(cfg, student, older) is cfg and pinned(cfg, student, state).model.teacher == teacher_file
