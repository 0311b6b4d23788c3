"""tools/compare_runs.py on two real (tiny) runs: the table matches their results, the figure is written."""

from __future__ import annotations

import json

import pytest

import launch
from tests.helpers import tiny_argv
from tools import compare_runs

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def test_table_and_figure_of_two_runs(demo_converted, tmp_path, capsys):
    for loss in ("ce", "dbm_ce"):
        launch.main(tiny_argv(demo_converted, tmp_path, loss, f"--loss.name={loss}", "--loss.scale=16"))
    capsys.readouterr()
    out = tmp_path / "compare.png"
    assert compare_runs.main([str(tmp_path / "ce"), str(tmp_path / "dbm_ce"), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "epoch", "many", "medium", "few", "top1"]
    for line in lines[1:3]:
        name, epoch, *cells = line.split()
        final = json.loads((tmp_path / name / "results.json").read_text())["final"]
        assert epoch == "1"
        want = [
            ("-" if final[g] is None else f"{100 * final[g]:.2f}") for g in ("many", "medium", "few", "top1")
        ]
        assert cells == want and want[0] == "-" and want[1] != "-"  # the demo split has no class over 100
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_runs_that_cannot_be_compared_are_named(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    assert compare_runs.main([str(tmp_path / "a")]) == 2
    assert "a/results.json: no results" in capsys.readouterr().err
    for name, counts in (("b", [5, 3]), ("c", [5, 2])):
        (tmp_path / name).mkdir()
        results = {"final": {"per_class": [0.5, 0.5]}, "class_counts": counts}
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    assert compare_runs.main([str(tmp_path / "b"), str(tmp_path / "c")]) == 2
    assert "c: trained on other class counts" in capsys.readouterr().err


def test_an_unwritable_out_is_one_line(tmp_path, capsys):
    (tmp_path / "b").mkdir()
    results = {"final": {"epoch": 1, "top1": 0.5, "per_class": [0.5, 0.5]}, "class_counts": [5, 3]}
    (tmp_path / "b" / "results.json").write_text(json.dumps(results))
    out = tmp_path / "no-such-folder" / "x.png"
    assert compare_runs.main([str(tmp_path / "b"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"compare_runs: --out {out}: cannot write the figure: No such file or directory"
