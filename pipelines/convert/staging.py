"""All-or-nothing output: everything is written into a hidden folder inside --out and renamed into place at
the end, so a failed or interrupted conversion leaves --out as it found it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


class OutputExistsError(FileExistsError):
    """An output of this stem is already in --out and --overwrite was not given."""


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class Staging:
    """`Staging(out, stem, names, overwrite)`; write into `path(name)`, then `commit()` or `abort()`.

    `names` are every output name a conversion of this stem may produce (`<stem>.beton`, `<stem>.dali`,
    `<stem>.meta.json`); with `overwrite` the old ones are all replaced at commit, so a stem never mixes the
    outputs of two conversions. The meta file, listed last, is renamed last: it exists only once the data
    does.
    """

    def __init__(self, out: str | os.PathLike, stem: str, names: list[str], overwrite: bool = False):
        self.out = Path(out)
        self.names = list(names)
        existing = [
            self.out / n for n in self.names if (self.out / n).exists() or (self.out / n).is_symlink()
        ]
        if existing and not overwrite:
            raise OutputExistsError(
                f"{', '.join(map(str, existing))} already exist(s); "
                f"pass --overwrite to replace the outputs of {stem!r}"
            )
        self.created: list[Path] = []  # folders made for --out, removed again on abort if left empty
        missing = []
        p = self.out.absolute()
        while not p.exists():
            missing.append(p)
            p = p.parent
        self.out.mkdir(parents=True, exist_ok=True)
        self.created = missing  # deepest first
        self.tmp = Path(tempfile.mkdtemp(dir=self.out, prefix=f".{stem}.partial-"))
        self.done = False

    def path(self, name: str) -> Path:
        return self.tmp / name

    def commit(self) -> list[Path]:
        """Replace the old outputs (if any) by the new ones; returns the new paths."""
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
