"""The seed-command map (docs/seed_commands.toml) against the recipes and docs/FIDELITY.md: every named recipe
exists and loads, each command's hyper-parameters are what the recipe loads to, and the docs table says what
the file says, row for row."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from pipelines.convert.readers.cifar import DEFAULT_IMB_RATIO
from trainer.recipe import load_config

ROOT = Path(__file__).resolve().parents[1]
SEEDS = tomllib.loads((ROOT / "docs" / "seed_commands.toml").read_text())["seed"]
VERDICTS = ("exact", "with listed differences")


def test_eighteen_numbered_rows_with_a_verdict():
    assert [s["id"] for s in SEEDS] == list(range(1, 19))
    for s in SEEDS:
        assert s["verdict"] in VERDICTS, s["id"]
        # a departure is named exactly where the verdict admits one
        assert ("differs" in s) == (s["verdict"] != "exact"), s["id"]
        assert s["hyper"] and s["command"] and s["remaining"], s["id"]


@pytest.mark.parametrize("seed", SEEDS, ids=[f"{s['id']}-{s['recipe']}" for s in SEEDS])
def test_command_hyper_parameters_equal_the_recipe(seed):
    path = ROOT / "configs" / f"{seed['recipe']}.toml"
    assert path.is_file(), f"{path} is missing"
    cfg = load_config(path, seed.get("overrides", []))
    for key, want in seed["hyper"].items():
        section, name = key.split(".")
        got = getattr(getattr(cfg, section), name)
        got = list(got) if isinstance(got, tuple) else got
        assert got == want, f"seed {seed['id']}: {key} is {got!r} in {path.name}, the command gives {want!r}"
    if "imbalance" in seed:  # CIFAR-LT: the recipe reads the split the converter cuts by default
        assert cfg.data.train.endswith("_lt_train") and seed["imbalance"] == DEFAULT_IMB_RATIO


def test_fidelity_table_matches_the_file():
    text = (ROOT / "docs" / "FIDELITY.md").read_text()
    section = text[text.index("## Seed commands against fastlt's recipes") :]
    rows = [line for line in section.splitlines() if re.match(r"\| \d+ \|", line)]
    table = []
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        recipe = re.match(r"`([\w]+)\.toml`", cells[2]).group(1)
        table.append((int(cells[0]), recipe, cells[3], cells[4], cells[5]))
    want = [(s["id"], s["recipe"], s["verdict"], s.get("differs", "-"), s["remaining"]) for s in SEEDS]
    assert table == want
