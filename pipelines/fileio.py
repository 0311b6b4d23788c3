"""Atomic file writes: the one helper every writer of a small file uses (meta files, run-folder files,
checkpoints, plots), so a crash never leaves a half-written file under the final name."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Temporary files are `.<name>.<random>.fastlt-tmp`: a sweep of leftovers (TEMP_GLOB) never takes a user's
# own `.notes.tmp`.
TEMP_SUFFIX = ".fastlt-tmp"
TEMP_GLOB = f".*{TEMP_SUFFIX}"


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    """Write to a temporary file beside `path`, flush it (to disk with `fsync`), then rename over `path`.

    The file gets the permissions a plain `open(path, "w")` would (mkstemp alone makes it 0600), so a meta
    file or a run's metrics are as readable as the rest of the output."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> None:
    atomic_write_bytes(path, text.encode(), fsync=fsync)
