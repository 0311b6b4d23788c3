"""Conversion progress in batch-job logs: one plain line per progress point when stderr is not a terminal
(SLURM, nohup, CI), the tqdm bar when it is."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios

import pytest

from tests.convert_util import CLI, ROOT, convert_tree, write_image_tree, write_list


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "images"
    write_list(root / "train.txt", write_image_tree(root, [5, 3, 2]))
    return root


PROGRESS_LINE = re.compile(r"train: (\d+)/10 images \(\d+%\), \d+ img/s, elapsed \d+:\d\d, ETA (\d+:\d\d|\?)")


def test_batch_job_logs_get_one_line_per_progress_point(tree, tmp_path):
    """stderr to a pipe (SLURM, nohup, CI): plain lines, never a bar's carriage-return frames."""
    p = convert_tree(tree, tmp_path / "o", "--workers", "1", "--progress-interval", "0", in_process=False)
    assert p.returncode == 0 and "\r" not in p.stderr, p.stderr
    lines = [PROGRESS_LINE.fullmatch(line) for line in p.stderr.splitlines()]
    assert all(lines) and [int(m[1]) for m in lines] == list(range(1, 11))  # one per sample at interval 0
    p = convert_tree(tree, tmp_path / "o2", in_process=False)  # the default interval: the final line only
    assert p.returncode == 0 and [PROGRESS_LINE.fullmatch(x)[1] for x in p.stderr.splitlines()] == ["10"]
    assert convert_tree(tree, tmp_path / "o3", "--no-progress", in_process=False).stderr == ""


def test_a_terminal_still_gets_the_bar(tree, tmp_path):
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    args = ["imagenet_lt", "--root", tree, "--split-file", tree / "train.txt", "--out", tmp_path / "o"]
    proc = subprocess.Popen([*CLI, *map(str, args)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=secondary)
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    assert proc.wait(timeout=120) == 0
    text = b"".join(chunks).decode()
    assert "\r" in text and "10/10" in text and not PROGRESS_LINE.search(text)
