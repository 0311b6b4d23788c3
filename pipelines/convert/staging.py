"""All-or-nothing output: everything is written into a hidden folder inside --out and renamed into place at
the end, so a failed or interrupted conversion leaves --out as it found it.

A SIGKILL (or a power cut) gets no chance to clean up and leaves that hidden folder behind, tens of GB for
ImageNet. Each one therefore holds `owner.json` (pid, host, the process's start time): the next conversion
into the same --out removes those whose process is provably gone and reports the others with their size.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

PARTIAL = ".partial-"  # hidden folders are `.<stem>.partial-<random>`
OWNER = "owner.json"


class OutputExistsError(FileExistsError):
    """An output of this stem is already in --out and --overwrite was not given."""


class OutputError(RuntimeError):
    """--out cannot be used (a file, under a file, read-only): the message names the path, nothing written."""


@contextlib.contextmanager
def naming(path: os.PathLike | str) -> Iterator[None]:
    """An OSError raised inside (a full disk while writing, ...) carries the file's name."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def disk_usage(path: Path) -> int:
    """Bytes a file or folder occupies on disk (sparse .beton pages count as what they really use)."""
    total = 0
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        with contextlib.suppress(OSError):
            st = p.lstat()
            total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/<pid>/stat): a pid reused later has another one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid())}


def owner_state(folder: Path) -> tuple[str, dict]:
    """("gone" | "running" | "unknown", owner record) of a hidden partial folder."""
    try:
        owner = json.loads((folder / OWNER).read_text())
        pid = int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown", {}  # no record (an older converter, or killed before writing it): not provable
    if owner.get("host") != socket.gethostname():
        return "unknown", owner  # another machine on a shared file system: its processes are not visible
    if Path("/proc/self/stat").exists():
        start = _start_time(pid)
        return ("running" if start is not None and start == owner.get("start") else "gone"), owner
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone", owner
    except PermissionError:
        pass
    return "running", owner


def sweep_partials(out: Path, stem: str) -> list[str]:
    """Remove the abandoned hidden partial folders in `out`; one line for each folder removed or left.
    A live conversion of the same stem into `out` is an error (its commit and ours would race)."""
    notes = []
    if not out.is_dir():
        return notes
    for folder in sorted(p for p in out.iterdir() if p.name.startswith(".") and PARTIAL in p.name):
        if not folder.is_dir() or folder.is_symlink():
            continue
        state, owner = owner_state(folder)
        size = human(disk_usage(folder))
        who = f"pid {owner['pid']} on {owner.get('host')}" if owner else "no owner record"
        if state == "gone":
            shutil.rmtree(folder, ignore_errors=True)
            notes.append(f"removed {folder} ({size}), left by an interrupted conversion ({who}, gone)")
        elif state == "running" and folder.name.startswith(f".{stem}{PARTIAL}"):
            raise OutputError(
                f"another conversion of {stem!r} ({who}) is writing into {out} ({folder}); "
                "wait for it or stop it; nothing was written"
            )
        else:
            what = "a conversion in progress" if state == "running" else "a partial conversion"
            notes.append(
                f"found {folder} ({size}): {what} ({who}); left in place, remove it once no conversion "
                f"writes into {out}"
            )
    return notes


def check_out(out: Path) -> None:
    """--out must be a folder or creatable as one: a one-line OutputError otherwise."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder; it was left as it was")
    p = out.absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise OutputError(
            f"--out {out}: {p} is a file, so no folder can be made under it; nothing was written"
        )


class Staging:
    """`Staging(out, stem, names)`; write into `path(name)`, then `commit()` or `abort()`.

    `names` are the outputs this conversion writes (`<stem>.beton`, `<stem>.dali`, `<stem>.meta.json`, the
    meta last); `commit()` replaces those that exist and touches nothing else of --out. Which existing
    outputs may be replaced is decided before (`outputs.plan_outputs`), and stale partial folders are swept
    before (`sweep_partials`).
    """

    def __init__(self, out: str | os.PathLike, stem: str, names: list[str]):
        self.out = Path(out)
        self.names = list(names)
        self.done = False
        check_out(self.out)
        missing = []
        p = self.out.absolute()
        while not p.exists():
            missing.append(p)
            p = p.parent
        self.created = missing  # deepest first: folders made for --out, removed again on abort if left empty
        # Named before it exists, so an abort at any point (SIGTERM lands between any two bytecodes) knows it.
        self.tmp = self.out / f".{stem}{PARTIAL}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir(mode=0o700)
            (self.tmp / OWNER).write_text(json.dumps(_owner_record()) + "\n")
        except BaseException as exc:  # also SIGTERM (SystemExit) or Ctrl-C landing right here
            self.abort()
            if isinstance(exc, OSError):
                raise OutputError(
                    f"--out {self.out}: cannot write there ({exc.strerror or exc}: {exc.filename}); "
                    "it was left as it was"
                ) from None
            raise

    def path(self, name: str) -> Path:
        return self.tmp / name

    def final(self, path: str | os.PathLike) -> Path:
        """Where a staged path will live after the commit (for messages)."""
        p = Path(path)
        return self.out / p.relative_to(self.tmp) if p.is_relative_to(self.tmp) else p

    def commit(self) -> list[Path]:
        """Replace the old outputs of `names` (if any) by the new ones; returns the new paths."""
        written = [n for n in self.names if self.path(n).exists()]
        for name in reversed(self.names):  # the old meta goes first: never a meta beside mismatched data
            target = self.out / name
            if target.exists() or target.is_symlink():
                _remove(target)
        for name in written:
            os.replace(self.path(name), self.out / name)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.done = True
        return [self.out / n for n in written]

    def abort(self) -> None:
        if self.done:
            return
        shutil.rmtree(self.tmp, ignore_errors=True)
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:
                break
        self.done = True
