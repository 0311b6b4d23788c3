"""One run per folder: an advisory lock file, `RUN_DIR/.lock`, held by a run's main process for its life.

The file is created with O_CREAT|O_EXCL (atomic on local filesystems and on NFSv3+, where flock alone is
not), holds the owner's pid, host and start time as JSON, and is also flock'ed where the filesystem allows
it. A second starter (the same run.name, or a `--resume` of a running run) gets one line naming the holder.
A lock is stale, and taken over with a warning, when its process is gone: on the same host that is asked
of the kernel; from another host it is seen only through the heartbeat, the holder touching the file every
HEARTBEAT_S seconds, so a lock untouched for STALE_S seconds (by the filesystem's own clock) is stale.
The invariant: while a run trains, its folder holds a lock file naming it, and only its owner removes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from trainer.rundir import RunDirError

LOCK_FILE = ".lock"
HEARTBEAT_S = 60.0
STALE_S = 600.0  # ten missed heartbeats: a holder on another host that stopped touching the file is gone

log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _fs_now(folder: Path) -> float:
    """The filesystem's clock (an NFS server's, not this host's): the mtime of a file created just now."""
    probe = folder / f".lock-clock.{socket.gethostname()}.{os.getpid()}"
    try:
        probe.touch()
        return probe.stat().st_mtime
    finally:
        probe.unlink(missing_ok=True)


def _describe(owner: dict[str, Any]) -> str:
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return f"pid {owner.get('pid')} on {owner.get('host')} (started {when})"


class RunLock:
    """`acquire()` takes the lock of `run_dir` (creating the folder) or raises RunDirError naming the holder;
    `release()` gives it back (idempotent). A context manager too."""

    def __init__(self, run_dir: Path, *, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.created_dir = False  # acquire() made the folder: a run that fails to start leaves nothing
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            self.created_dir = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise RunDirError(
                f"run folder {self.run_dir}: a file is in the way (check run.out_dir)"
            ) from None
        except OSError as exc:
            raise RunDirError(
                f"run folder {self.run_dir}: cannot create it ({exc.strerror or exc})"
            ) from None
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(3):  # a takeover races at most with another taker
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as exc:
                raise RunDirError(
                    f"run folder {self.run_dir}: cannot write there ({exc.strerror or exc}); "
                    "check run.out_dir"
                ) from None
            os.write(fd, (json.dumps(owner) + "\n").encode())
            os.fsync(fd)
            with contextlib.suppress(OSError, AttributeError):  # NFS without lockd, or no fcntl
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._fd = fd
            self._stop.clear()
            self._thread = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
            self._thread.start()
            return
        raise RunDirError(f"run folder {self.run_dir}: could not take its lock {self.path}; try again")

    def _read_owner(self, path: Path) -> dict[str, Any]:
        try:
            owner = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def _stale(self, owner: dict[str, Any]) -> str | None:
        """Why the lock `owner` describes is stale, or None while its process may be running."""
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            return None if _alive(owner["pid"]) else "its process is gone"
        mtime = self.path.stat().st_mtime
        try:
            age = _fs_now(self.run_dir) - mtime
        except OSError:  # a read-only folder: this host's clock
            age = time.time() - mtime
        if age > self.stale_s:
            return f"untouched for {age:.0f} s (heartbeat every {self.heartbeat_s:.0f} s)"
        return None

    def _take_over_if_stale(self) -> None:
        try:
            owner = self._read_owner(self.path)
            why = self._stale(owner)
        except FileNotFoundError:
            return  # released meanwhile: try again
        if why is None:
            raise RunDirError(
                f"run folder {self.run_dir} is in use by {_describe(owner)}; wait for it to end, or start "
                f"another run with --run.name=NAME (if that process is gone for good, delete {self.path})"
            )
        # Rename first (atomic): of two takers only one moves the stale file; then check it was that file.
        aside = self.path.with_name(f"{LOCK_FILE}.stale.{socket.gethostname()}.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if self._read_owner(aside) != owner:  # another taker's fresh lock: put it back
            with contextlib.suppress(OSError):
                os.rename(aside, self.path)
            return
        aside.unlink(missing_ok=True)
        log.warning("run folder %s: took over the stale lock of %s (%s)", self.run_dir, _describe(owner), why)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(OSError):
            os.close(self._fd)  # drops the flock
        owner = self._read_owner(self.path)
        if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
        self._fd = None

    def forget_folder_if_unused(self) -> None:
        """Release, and remove the folder if acquire() created it and nothing else was written there."""
        self.release()
        if self.created_dir:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()
