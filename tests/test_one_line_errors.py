"""What a user meets as one line naming the key or file, not a traceback: `model.pretrained` that names no
usable weights, a symlink loop among shard files, an override's bad value (blamed on the override, not the
recipe), a zero-byte checkpoint."""

from __future__ import annotations

import pickle

import pytest
import torch
import torchvision

from pipelines import DataConfig, make_loader
from pipelines.shards import ShardError, open_shards
from tests.test_sample_check import _label_shards
from trainer.checkpoint import CheckpointError, load_checkpoint
from trainer.config import ConfigError
from trainer.recipe import load_config
from trainer.resnet_imagenet import PlacesResNet152, PretrainedError


class Evil:
    def __reduce__(self):
        return (print, ("a pickle weights_only refuses",))


def test_every_pretrained_error_is_one_line_naming_the_key(tmp_path):
    text = tmp_path / "weights.txt"
    text.write_text("these are not weights\n")
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"conv1.weight": Evil()}))
    small = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), small)
    cases = {
        "": "model.pretrained is empty",
        "torchvision:NoSuch_Weights.X": "model.pretrained: torchvision:NoSuch_Weights.X is not a torchvision",
        str(text): "weights.txt is not a PyTorch weights file torch.load reads with weights_only",
        str(
            evil
        ): "evil.pth is not a PyTorch weights file torch.load reads with weights_only (a state_dict of "
        "tensors): the weights-only unpickler refuses it (Unsupported",
        str(small): "resnet18.pth is not a torchvision ResNet-152 state_dict: ",
    }
    for source, want in cases.items():
        with pytest.raises(PretrainedError) as err:
            PlacesResNet152(source)
        msg = str(err.value)
        assert want in msg and "\n" not in msg and msg.startswith("model.pretrained"), msg
    assert "missing keys" in msg and "shapes differ" in msg


def test_a_symlink_loop_among_shards_is_one_line(tmp_path):
    _label_shards(tmp_path / "train", [0, 1, 0, 1])
    (tmp_path / "train" / "a.tar").symlink_to("b.tar")
    (tmp_path / "train" / "b.tar").symlink_to("a.tar")
    cfg = DataConfig(backend="dali", dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), batch_size=2)
    with pytest.raises(ShardError, match=r"train/a.tar: cannot open this shard: Too many levels of symbolic"):
        make_loader(cfg, "train")
    with pytest.raises(ShardError, match=r"train/a.tar: cannot open this shard"):
        open_shards(tmp_path / "train")


def test_override_errors_name_the_override_not_the_recipe(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[data]\nbatch_size = 64\ncutout = 0\n")
    for overrides, want in (
        (["--data.batch_size=0"], "override --data.batch_size=0: data.batch_size: must be >= 1"),
        (["--data.bach_size=3"], "override --data.bach_size=3: unknown key data.bach_size"),
        (["--data.batch_size=abc"], "override --data.batch_size=abc: data.batch_size: expected an integer"),
        (["--runn.x=1"], "override --runn.x=1: unknown section [runn]"),
        (["--data.resolution=8", "--data.cutout=9"], "override --data.cutout=9: data.cutout: must be in"),
    ):
        with pytest.raises(ConfigError) as err:
            load_config(recipe, overrides)
        assert str(err.value).startswith(want) and "recipe.toml" not in str(err.value), str(err.value)
    recipe.write_text("[data]\nbatch_size = 0\n")
    with pytest.raises(ConfigError, match=r"recipe.toml: data.batch_size: must be >= 1"):
        load_config(recipe, ["--data.cutout=0"])  # the recipe's own value is still blamed on the recipe


def test_a_zero_byte_checkpoint_says_why(tmp_path):
    empty = tmp_path / "epoch-0001.pt"
    empty.write_bytes(b"")
    with pytest.raises(
        CheckpointError, match=r"epoch-0001.pt: cannot read checkpoint: the file is empty \(0"
    ):
        load_checkpoint(empty)
    empty.write_text("hello\n")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint: \w+Error: .+"):
        load_checkpoint(empty)


def test_weights_for_an_arch_that_ignores_them_are_refused(tmp_path):
    """Only the bodies that load weights take `model.pretrained`; elsewhere it would be silently ignored."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[model]\narch = "resnet32"\n')
    with pytest.raises(ConfigError) as err:
        load_config(recipe, ["--model.pretrained=/w/resnet32.pth"])
    want = "override --model.pretrained=/w/resnet32.pth: model.pretrained: 'resnet32' is built from scratch"
    assert str(err.value).startswith(want) and "'resnet152_places', 'timm:<name>'" in str(err.value)
    for arch in ("resnet152_places", "timm:resnet18"):  # checked when built, not here
        load_config(recipe, [f"--model.arch={arch}", "--model.pretrained=/w/weights.pth"])
