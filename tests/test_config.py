"""The config tree: TOML recipes, `--section.key=value` overrides, errors naming the key, recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import Config, ConfigError, dump_toml, load_config, to_dict

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
    assert to_dict(cfg)["run"]["name"] == cfg.run.name


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_names_registered_parts(path):
    """Arch, loss, schedule and augmentation names are checked against the registries, not only parsed."""
    from launch import check_names

    check_names(load_config(path))
