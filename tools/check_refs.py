"""Fail on a citation of a document the repository does not ship (`make lint`).

The code, recipes and docs must explain themselves from the clone: a pointer to a review, an internal spec
or an issue number sends the reader somewhere they cannot follow. A hit whose path-like word names a file
or folder the repository holds is allowed. Prints `file:line: text` per hit; exit status 1 on any.

    python -m tools.check_refs            # every tracked *.py, *.toml, *.md, *.cfg, *.sh and Makefile
    python -m tools.check_refs FILE...    # just these files
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

# Spelled so that this file does not match itself.
PATTERN = re.compile(
    r"spec(?=/)|\b(?:spec|audit)\s*§|fidelity[-]audit|gpu[-]review|architecture[-]2|review(?=/)"
    r"|\bissue\s*#?\s*[0-9]",
    re.IGNORECASE,
)
SUFFIXES = (".py", ".toml", ".md", ".cfg", ".sh")
NAMES = ("Makefile",)
PATH_WORD = re.compile(r"[\w./-]+")


def tracked_files(root: Path) -> list[Path]:
    """The repository's tracked files that the check reads (git ls-files)."""
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    names = [n for n in out.split("\0") if n]
    return [root / n for n in names if n.endswith(SUFFIXES) or Path(n).name in NAMES]


def _ships(word: str, root: Path) -> bool:
    """Whether a path-like word (`docs/FIDELITY.md`, `./tools/`) names something in the repository."""
    word = word.strip("./")
    return bool(word) and (root / word).exists()


def find_refs(paths: list[Path], root: Path) -> list[tuple[Path, int, str]]:
    """(file, 1-based line, line text) for every citation of a document that `root` does not hold."""
    hits = []
    for path in paths:
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            for match in PATTERN.finditer(line):
                words = [w for w in PATH_WORD.finditer(line) if w.start() <= match.start() < w.end()]
                if words and _ships(words[0].group(), root):
                    continue
                hits.append((path, number, line.strip()))
                break
    return hits


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path.cwd()
    paths = [Path(a) for a in args] if args else tracked_files(root)
    hits = find_refs(paths, root)
    for path, number, text in hits:
        shown = path.relative_to(root) if path.is_absolute() and path.is_relative_to(root) else path
        print(f"{shown}:{number}: {text}")
    if hits:
        print(
            f"check_refs: {len(hits)} citation(s) of documents the repository does not ship", file=sys.stderr
        )
    return 1 if hits else 0


if __name__ == "__main__":
    sys.exit(main())
