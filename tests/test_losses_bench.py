"""tools/bench_losses.py: `run` returns one row per (size, loss, mode) with its ratio to plain CE."""

from __future__ import annotations

import pytest

from losses import loss_class, loss_names
from tools.bench_losses import markdown, run


def test_run_rows_and_table():
    rows = run("cpu", [(8, 5)], repeats=1, modes=("eager",), rounds=1, warmup=1)
    assert [r["loss"] for r in rows] == [n for n in loss_names() if loss_class(n).model == "classifier"]
    for row in rows:
        assert row["n"] == 8 and row["c"] == 5 and row["mode"] == "eager"
        assert (
            row["ms"] > 0
            and row["ce_ms"] > 0
            and row["ratio"] == pytest.approx(row["ms"] / row["ce_ms"], 1e-2)
        )
    table = markdown(rows)
    assert "| 8 x 5 | dbm_ce |" in table and table.count("\n") == len(rows) + 1
    with pytest.raises(ValueError, match="clock"):
        run("cpu", [(8, 5)], 1, clock="cycles")
