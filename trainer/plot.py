"""Per-class test accuracy against training frequency: the picture of what a long-tail method changes."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.fileio import atomic_write_bytes
from trainer.metrics import shot_group

_BANDS = (("many", "#4c72b0"), ("medium", "#dd8452"), ("few", "#c44e52"))


def per_class_figure(accuracy: Sequence[float], class_counts: Sequence[int], title: str = "") -> Any:
    """Bars: per-class accuracy, classes sorted by training count (head on the left); line: the count on a
    log axis; shaded bands: the many / medium / few groups. A matplotlib Figure on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    if len(accuracy) != len(class_counts):
        raise ValueError(f"{len(accuracy)} accuracies for {len(class_counts)} class counts")
    order = sorted(range(len(class_counts)), key=lambda c: (-class_counts[c], c))
    acc = [100.0 * float(accuracy[c]) for c in order]
    counts = [int(class_counts[c]) for c in order]
    xs = range(len(order))

    fig = Figure(figsize=(max(6.0, min(18.0, 0.06 * len(order) + 5)), 4.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    groups = [shot_group(n) for n in counts]
    for name, colour in _BANDS:
        idx = [i for i, g in enumerate(groups) if g == name]
        if idx:
            ax.axvspan(idx[0] - 0.5, idx[-1] + 0.5, color=colour, alpha=0.08, lw=0)
            mean = sum(acc[i] for i in idx) / len(idx)
            ax.bar(
                [xs[i] for i in idx],
                [acc[i] for i in idx],
                width=1.0,
                color=colour,
                label=f"{name} ({len(idx)} classes, mean {mean:.1f}%)",
            )
    ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set_ylim(0, 100)
    ax.set_xlabel("class, sorted by training images")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    twin = ax.twinx()
    twin.plot(list(xs), counts, color="black", lw=1.2)
    twin.set_yscale("log")
    twin.set_ylabel("training images (log)")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def figure_array(fig: Any) -> np.ndarray:
    """The figure's pixels, uint8 H x W x 3 (what trackers take as an image)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def plot_per_class_accuracy(
    path: Path, accuracy: Sequence[float], class_counts: Sequence[int], title: str = ""
) -> None:
    """`per_class_figure`, written atomically as a PNG."""
    buf = io.BytesIO()
    per_class_figure(accuracy, class_counts, title).savefig(buf, format="png")
    atomic_write_bytes(Path(path), buf.getvalue())
