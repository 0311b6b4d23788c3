"""tools/bench_losses.py and the timer every bench tool shares (tools/timer.py)."""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch

from losses import loss_names
from tools.bench_losses import markdown, run
from tools.timer import Timer


def test_run_gives_one_row_per_size_loss_and_mode_and_the_table_shows_them():
    sizes, names = [(8, 5), (6, 3)], ["ce", "dbm_ce", "fbl"]
    rows = run("cpu", sizes, repeats=1, losses=names, modes=("eager",), rounds=1, warmup=1)
    assert [(r["n"], r["c"], r["mode"], r["loss"]) for r in rows] == [
        (n, c, "eager", name) for (n, c), name in itertools.product(sizes, names)
    ]
    for row in rows:
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("ms", "ce_ms", "ratio"))
    table = markdown(rows)
    assert table.count("\n") == len(rows) + 1
    for row in rows:  # each row on its own line, eager figures filled in, compiled ones marked missing
        line = f"| {row['n']} x {row['c']} | {row['loss']} | {row['ms']:.3f} | {row['ce_ms']:.3f} | "
        assert line + f"{row['ratio']:.2f}x | - | - | - |" in table


def test_every_registered_loss_runs_by_default():
    """Every loss, whatever kind of model feeds it: a new kind without bench inputs fails here."""
    rows = run("cpu", [(4, 3)], repeats=1, modes=("eager",), rounds=1, warmup=0)
    assert [r["loss"] for r in rows] == loss_names()
    assert {"dbm_gml", "dbm_bcl", "fbl", "dbm_ncl"} <= {r["loss"] for r in rows}


def test_timer_runs_warm_up_off_the_clock_and_times_the_calls():
    calls = []
    timer = Timer("cpu")
    timer.warm_up(lambda: calls.append("warm"), 2)
    seconds = timer.per_call(lambda: (calls.append("timed"), time.sleep(0.01)), 3)
    assert calls == ["warm"] * 2 + ["timed"] * 3
    assert seconds >= 0.01  # a wall clock counts the sleep


@pytest.fixture
def threads():
    """Set torch's intra-op thread count for one test, then restore it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_thread_clock_leaves_out_waiting(threads):
    threads(1)
    assert Timer("cpu", clock="thread").per_call(lambda: time.sleep(0.05), 2) < 0.025


def test_timer_refuses_a_clock_it_cannot_honour(threads):
    with pytest.raises(ValueError, match="clock must be one of wall, thread"):
        Timer("cpu", clock="cycles")
    threads(2)  # other threads' work would go uncounted
    with pytest.raises(ValueError, match="set_num_threads"):
        Timer("cpu", clock="thread")
    with pytest.raises(ValueError, match="clock"):
        run("cpu", [(8, 5)], 1, clock="cycles")
