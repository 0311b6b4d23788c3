"""tools/paper_table: the published figures agree with the recipes' headers, the plan trains a GML row's
teacher first, the emitted lines are launch.py's, and two rows really run on tiny data (one epoch) and come
back as the side-by-side table and the figure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools import paper_table as pt

ROOT = Path(__file__).resolve().parents[1]
TABLES = pt.load_tables()

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def test_every_row_names_a_recipe_and_headers_quote_the_same_figure():
    for name, table in TABLES.items():
        for row in table["rows"]:
            for recipe in filter(None, (row["recipe"], row.get("teacher"))):
                assert (ROOT / "configs" / f"{recipe}.toml").is_file(), f"{name}: {recipe}"
            if row.get("top1") is None or row.get("overrides") or table.get("imbalance", 100) != 100:
                continue  # a recipe's header quotes its own imbalance-100 (or large-scale) figure
            head = (ROOT / "configs" / f"{row['recipe']}.toml").read_text().splitlines()[0]
            quoted = re.search(r"expect top-1 ([\d.]+)", head)
            assert quoted and float(quoted.group(1)) == row["top1"], f"{row['recipe']}: {head}"


def test_plan_trains_the_teacher_first_once_and_hands_it_to_both_students(tmp_path):
    data = {"cifar100_lt_if50": tmp_path / "c100_if50"}
    plan = pt.make_plan(TABLES, ["cifar100_lt_if50"], data, tmp_path / "runs", ["--run.epochs=1"])
    names = [j.name for j in plan.jobs]
    teacher = "cifar100_lt_if50__gml_teacher"
    assert names.count(teacher) == 1
    assert (
        names.index(teacher) < names.index("cifar100_lt_if50__gml") < names.index("cifar100_lt_if50__dbm_gml")
    )
    for job in plan.jobs:
        assert f"--data.dir={data['cifar100_lt_if50']}" in job.args and job.args[-1] == "--run.epochs=1"
        if job.name.endswith("gml") and job.name != teacher:
            assert job.after == (teacher,) and f"--model.teacher={tmp_path / 'runs' / teacher}" in job.args
    assert pt.data_dir(TABLES["cifar100_lt_if50"], Path("d")) == Path("d/cifar100_lt_if50")
    assert pt.data_dir(TABLES["cifar100_lt_if100"], Path("d")) == Path("d/cifar100_lt")


def test_dry_run_and_emit_list_launch_lines(capsys, tmp_path):
    assert pt.main(["cifar100_lt_if100", "--dry-run", "--runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("python launch.py --config configs/") == 10  # 9 rows + the GML teacher
    assert "57.48" in out and "DBM-NCL" in out and not (tmp_path / pt.FIGURE).exists()
    assert (
        pt.main(["imagenet_lt", "--rows", "dbm_bcl_r50", "--emit", "accelerate", "--override", "run.seed=1"])
        == 0
    )
    line = capsys.readouterr().out.strip()
    assert line.startswith("accelerate launch --num_processes 4 --multi_gpu launch.py --config ")
    assert line.endswith("--run.seed=1")
    assert pt.main(["places_lt", "--emit", "slurm", "--runs", str(tmp_path)]) == 0
    assert "places_lt_fbl.toml" in (tmp_path / pt.SBATCH).read_text()
    with pytest.raises(SystemExit):
        pt.main(["cifar100_lt_if100", "--rows", "nope"])


def test_two_rows_train_and_the_table_and_figure_come_back(demo_converted, tmp_path, capsys):
    """DBM-CE and DBM-BS of CIFAR-10-LT on the 12-class demo set: ResNet-8, one epoch of one batch, eager fp32
    (about 10 s a run on an idle 2-core machine, most of it start-up)."""
    runs = tmp_path / "runs"
    argv = [
        "cifar10_lt_if100",
        "--rows",
        "dbm_ce,dbm_bs",
        "--data",
        f"cifar10_lt_if100={demo_converted}",
        "--runs",
        str(runs),
        "--override",
        "run.epochs=1",
        "model.arch=resnet8",
        "data.train=train",
        "data.eval=test",
        "data.backend=dali",
        "data.num_workers=1",
        "step.mode=eager",
        "step.precision=fp32",
        "data.epoch_samples=64",  # one batch an epoch: the test times the plumbing, not the training
        "run.progress=false",
    ]
    assert pt.main(argv) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("DBM-CE", "DBM-BS"))}
    assert set(rows) == {"DBM-CE", "DBM-BS"}
    for method, paper in (("DBM-CE", 80.84), ("DBM-BS", 84.60)):
        cells = rows[method].split()
        top1_paper, top1_ours, diff = cells[-3:]
        assert float(top1_paper) == paper and 0 <= float(top1_ours) <= 100
        assert float(diff) == pytest.approx(float(top1_ours) - paper, abs=0.011)
    assert (runs / pt.FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A second call finds both runs done: it only reports.
    assert pt.main(argv) == 0
    assert out.count("done earlier") == 0 and capsys.readouterr().out.count("done earlier") == 2
