"""Durations as people read them in a log (`1:02:03`, `4:05`), shared by the converter's and the trainer's
batch-job progress lines; importing it costs nothing (no torch, no cv2)."""

from __future__ import annotations


def duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
