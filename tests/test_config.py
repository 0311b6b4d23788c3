"""The config tree: TOML recipes, `--section.key=value` overrides, errors naming the key, recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from losses import loss_class
from trainer.config import Config, ConfigError
from trainer.models import check_model
from trainer.recipe import dump_toml, load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").glob("*.toml"))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    assert load_config(None) == Config()


def test_recipe_values_and_overrides(tmp_path):
    path = _write(tmp_path, '[run]\nepochs = 3\n[optim]\nlr = 1\nmilestones = [2, 3]\n[loss]\nname = "fbl"\n')
    cfg = load_config(
        path,
        [
            "--optim.lr=0.5",
            "--data.backend=dali",
            "--run.progress=false",
            "--data.mean=[0.5, 0.5, 0.5]",
            "data.cutout=16",
        ],
    )
    assert cfg.run.epochs == 3
    assert cfg.optim.lr == 0.5 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.milestones == (2, 3)
    assert cfg.loss.name == "fbl"
    assert cfg.data.backend == "dali"  # a bare word is a string
    assert cfg.run.progress is False
    assert cfg.data.mean == (0.5, 0.5, 0.5)
    assert cfg.data.cutout == 16
    assert cfg.model == Config().model  # untouched sections keep their defaults


def test_string_keys_take_the_override_text():
    """`--run.name=2024` names a run "2024": a string key keeps the text TOML would read as a number."""
    assert load_config(None, ["--run.name=2024"]).run.name == "2024"
    assert load_config(None, ["--run.name=nan"]).run.name == "nan"
    assert load_config(None, ["--run.name=true"]).run.name == "true"
    assert load_config(None, ['--run.name="a b"']).run.name == "a b"
    assert load_config(None, ["--data.train=1_000"]).data.train == "1_000"
    assert load_config(None, ["--run.seed=2024"]).run.seed == 2024  # typed keys still parse


def test_int_is_accepted_for_a_float_but_not_the_reverse(tmp_path):
    assert load_config(None, ["--optim.weight_decay=0"]).optim.weight_decay == 0.0
    with pytest.raises(ConfigError, match=r"run\.epochs"):
        load_config(None, ["--run.epochs=2.5"])


@pytest.mark.parametrize(
    ("text", "overrides", "names"),
    [
        ("[run]\nepochz = 3\n", [], ["run.epochz", "epochs"]),  # unknown key: named, valid keys listed
        ("[runn]\nepochs = 3\n", [], ["[runn]", "run"]),  # unknown section
        ('[run]\nepochs = "3"\n', [], ["run.epochs", "integer"]),  # wrong type
        ("[data]\nhflip = 1\n", [], ["data.hflip"]),
        ("", ["--optim.lrr=0.1"], ["optim.lrr", "weight_decay"]),
        ("", ["--optim.lr=fast"], ["optim.lr", "number"]),
        ("", ["--optim.milestones=3"], ["optim.milestones", "list"]),
        ("", ["--lr=0.1"], ["--lr=0.1", "section.key=value"]),
        # choices: each section checks its names against the registry or Literal it is typed with
        ("", ["--loss.name=dbm"], ["loss.name", "unknown loss 'dbm'", "dbm_ce"]),
        ("", ["--loss.margin_norm=max"], ["loss.margin_norm", "'max'", "min", "last"]),
        ("", ["--data.sampler=weighted"], ["data.sampler", "'uniform'", "'sqrt'"]),
        ("", ["--data.auto_augment=autoaugment"], ["data.auto_augment", "'imagenet'", "'randaugment'"]),
        ("", ["--step.precision=fp16"], ["step.precision", "'bf16'"]),
        ("", ["--optim.schedule=linear"], ["optim.schedule", "'constant'"]),
        ("", ["--model.arch=vgg"], ["model.arch", "'resnet50'"]),
        # types and ranges
        ("", ['--loss.scale="32"'], ["loss.scale", "number"]),
        ("", ["--loss.detach_difficulty=1"], ["loss.detach_difficulty", "true or false"]),
        ("", ["--loss.drw_epoch=160.0"], ["loss.drw_epoch", "integer"]),
        ("", ["--optim.lr=nan"], ["optim.lr", "finite"]),
        ("", ["--optim.lr=-0.1"], ["optim.lr", "> 0"]),
        ("", ["--optim.momentum=5"], ["optim.momentum", "[0, 1)"]),
        ("", ["--optim.weight_decay=inf"], ["optim.weight_decay"]),
        ("", ["--run.epochs=0"], ["run.epochs", ">= 1"]),
        ("", ["--data.num_workers=0"], ["data.num_workers", ">= 1"]),
        ("", ["--data.crop_scale=[0.9, 0.1]"], ["data.crop_scale", "low <= high"]),
        ("", ["--loss.bcl_temperature=0"], ["loss.bcl_temperature", "> 0"]),
        ("", ["--loss.gml_alpha=-1"], ["loss.gml_alpha", ">= 0"]),
        ("", ["--loss.gml_kd_temperature=inf"], ["loss.gml_kd_temperature", "finite"]),
        ("", ["--model.teacher_arch=vgg"], ["model.teacher_arch", "'resnet56'"]),
        ("", ["--model.gml_queue_size=0"], ["model.gml_queue_size", ">= 1"]),
        ("", ["--model.gml_temperature=0"], ["model.gml_temperature", "> 0"]),
        # the loss declares its view recipe: a recipe's key is refused as any unknown key
        ('[data]\nview_recipe = "classification"\n', [], ["unknown key data.view_recipe"]),
        ("", ["--loss.ncl_hcm_n=0"], ["loss.ncl_hcm_n", ">= 1"]),
        ("", ["--loss.ncl_temperature=0"], ["loss.ncl_temperature", "> 0"]),
        ("", ["--model.ncl_queue=0"], ["model.ncl_queue", ">= 1"]),
        ("", ["--model.ncl_ema=1.5"], ["model.ncl_ema", "[0, 1]"]),
        ("", ["--model.ncl_ema_updates=-1"], ["model.ncl_ema_updates", ">= 0"]),
    ],
)
def test_errors_name_the_key(tmp_path, text, overrides, names):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text), overrides)
    for name in names:
        assert name in str(err.value)


def test_missing_and_invalid_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml"):
        load_config(tmp_path / "nope.toml")
    bad = _write(tmp_path, "[run\n")
    with pytest.raises(ConfigError, match="recipe.toml"):
        load_config(bad)


def test_recipes_exist():
    names = {p.stem for p in RECIPES}
    for required in (
        "demo",
        "cifar100_lt_dbm_ce",
        "cifar100_lt_dbm_drw",
        "cifar100_lt_dbm_bs",
        "cifar100_lt_fbl",
        "cifar10_lt_dbm_ce",
        "cifar10_lt_dbm_drw",
        "cifar10_lt_dbm_bs",
        "cifar10_lt_fbl",
        "imagenet_lt_fbl",
        "places_lt_fbl",
        "cifar100_lt_gml_teacher",
        "cifar100_lt_gml",
        "cifar100_lt_dbm_gml",
        "imagenet_lt_gml",
        "imagenet_lt_gml_teacher",
        "imagenet_lt_dbm_gml",
        "inat2018_gml_teacher",
        "inat2018_dbm_gml",
        "cifar100_lt_dbm_ncl",
        "cifar10_lt_dbm_ncl",
        "cifar100_lt_ncl",
        "cifar10_lt_ncl",
        "cifar100_lt_crt",
        "imagenet_lt_crt",
        "imagenet_lt_dbm_ce_vit_s16",
    ):
        assert required in names, f"configs/{required}.toml is missing"
    assert any(n.startswith("imagenet_lt_dbm") and "resnext50" in n for n in names)
    assert any(n.startswith("inat2018") for n in names)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    assert path.read_text().startswith("#"), f"{path.name}: the first line names the paper figure"
    again = _write(tmp_path, dump_toml(cfg))
    assert load_config(again) == cfg
    # The model the loss needs fits the recipe (NCL: a CIFAR ResNet, a queue the batch divides), one process.
    check_model(cfg.model, loss_class(cfg.loss.name), batch_size=cfg.data.batch_size, world_size=1)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../up", "/abs", "a\\b", "nul\0"])
def test_run_name_is_one_folder_name(name):
    with pytest.raises(ConfigError, match=r"run\.name: must be one folder name"):
        load_config(None, [f"--run.name={name}"])


@pytest.mark.parametrize("seed", ["-1", str(2**31), str(2**64)])
def test_run_seed_out_of_range_names_the_key(seed):
    with pytest.raises(ConfigError, match=r"run\.seed: must be in 0 \.\. 2\*\*31 - 1"):
        load_config(None, [f"--run.seed={seed}"])
    assert load_config(None, [f"--run.seed={2**31 - 1}"]).run.seed == 2**31 - 1


HOSTILE = [
    "line\nbreak",
    'say "hi"',
    "back\\slash\\",
    "tab\tcr\rnul\0bell\x07del\x7f",
    "ünïcødé ✓ 😀",
    "'",
    "][",
]


def test_every_string_key_round_trips_through_config_toml():
    """config.toml must read back whatever strings a run was given: every string key, hostile values
    (set past the sections' own checks, which some of them would refuse)."""
    import dataclasses
    import tomllib
    import typing

    from trainer.config import to_dict

    cfg = Config()
    string_keys = [
        (section.name, f.name)
        for section in dataclasses.fields(Config)
        for f in dataclasses.fields(getattr(cfg, section.name))
        if typing.get_type_hints(type(getattr(cfg, section.name)))[f.name] is str
    ]
    assert len(string_keys) > 10
    for value in HOSTILE:
        for section, key in string_keys:
            object.__setattr__(getattr(cfg, section), key, value)
        tree = tomllib.loads(dump_toml(cfg))
        for section, key in string_keys:
            assert tree[section][key] == value, (section, key, value)
        assert tree["run"] == {
            k: list(v) if isinstance(v, tuple) else v for k, v in to_dict(cfg)["run"].items()
        }
    good = load_config(None, ['--run.name=ünï "q" x', "--run.wandb_project=a\tb\\c"])
    assert load_config_text(dump_toml(good)) == good


def load_config_text(text: str) -> Config:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return load_config(_write(Path(tmp), text))


def test_a_string_that_is_not_utf8_is_refused_by_key():
    with pytest.raises(ConfigError, match=r"run\.name: .* is not valid UTF-8"):
        load_config(None, ["--run.name=bad\udcff"])
