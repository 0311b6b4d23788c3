"""`<relative/path> <label>` lists: ImageNet-LT and Places-LT (OLTR release), and the iNaturalist lists."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..samples import SampleList, SplitError, SplitRequest
from . import register

# An optional minus and ASCII digits: int() would also take `1_0` (as 10), `+3`, `٣` and other typos.
INTEGER = re.compile(r"-?[0-9]+")

# Where `--split NAME` looks when no `--split-file` is given (relative to --root).
DEFAULT_LISTS = {
    "imagenet_lt": ("ImageNet_LT_{split}.txt",),
    "places_lt": ("Places_LT_{split}.txt",),
    "inat2018": ("{split}2018.json", "iNaturalist18_{split}.txt"),
}


def split_name(stem: str) -> str:
    """`ImageNet_LT_train` -> `train`: the conventional split word in a file stem, else the stem itself."""
    low = stem.lower()
    hits = [(low.rfind(w), w) for w in ("train", "val", "test") if w in low]
    return max(hits)[1] if hits else stem


def resolve_split_file(request: SplitRequest) -> Path:
    """The split file: `--split-file`, or the dataset's conventional name for `--split` under --root."""
    if request.split_file is not None:
        path = Path(request.split_file)
        if not path.is_file():
            raise SplitError(f"split file {path} does not exist")
        return path
    if not request.split:
        raise SplitError(f"{request.dataset}: give --split-file FILE or --split NAME")
    tried = [request.root / pattern.format(split=request.split) for pattern in DEFAULT_LISTS[request.dataset]]
    for path in tried:
        if path.is_file():
            return path
    raise SplitError(
        f"{request.dataset}: no split file for --split {request.split}: tried "
        + ", ".join(map(str, tried))
        + "; pass --split-file"
    )


def parse_list(path: Path) -> tuple[list[str], list[int], list[int]]:
    """Paths, labels and 1-based line numbers. The label is the last whitespace-separated token (as DALI's
    `file_list` parses it), so paths may contain spaces; empty lines are skipped."""
    paths: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    try:
        text_lines = path.read_text(encoding="utf-8-sig").split("\n")  # not splitlines(): only \n ends a line
    except (OSError, UnicodeDecodeError) as exc:
        raise SplitError(f"cannot read split file {path}: {exc}") from None
    for lineno, raw in enumerate(text_lines, 1):
        text = raw.strip()
        if not text:
            continue
        parts = text.rsplit(None, 1)
        if len(parts) != 2:
            raise SplitError(f"{path} line {lineno}: expected '<relative/path> <label>', got {text!r}")
        if not INTEGER.fullmatch(parts[1]):
            raise SplitError(f"{path} line {lineno}: label {parts[1]!r} is not an integer (digits only)")
        paths.append(parts[0])
        labels.append(int(parts[1]))
        lines.append(lineno)
    if not paths:
        raise SplitError(f"split file {path} lists no image")
    return paths, labels, lines


def check_inside_root(request: SplitRequest, origin: Path, paths: list[str], where: list[str]) -> None:
    """Split-file paths are relative to --root and stay inside it (a list from elsewhere must not make the
    converter read /etc or ../other_dataset), unless --allow-outside-root says they may. `where[i]` locates
    paths[i] in `origin` ("line 12", "images[3]")."""
    if request.allow_outside_root:
        return
    for path, at in zip(paths, where, strict=True):
        norm = os.path.normpath(path)
        if os.path.isabs(path) or norm == ".." or norm.startswith(".." + os.sep):
            kind = "is absolute" if os.path.isabs(path) else "leaves --root"
            raise SplitError(
                f"{origin} {at}: path {path!r} {kind}; paths are relative to --root "
                "(pass --allow-outside-root to read it anyway)"
            )


def given_num_classes(request: SplitRequest) -> int | None:
    if request.num_classes is not None and request.num_classes < 1:
        raise SplitError(f"--num-classes must be >= 1, got {request.num_classes}")
    return request.num_classes


def read_list_file(request: SplitRequest, path: Path) -> SampleList:
    paths, labels, lines = parse_list(path)
    check_inside_root(request, path, paths, [f"line {n}" for n in lines])
    given = given_num_classes(request)
    return SampleList(
        dataset=request.dataset,
        split=request.split or split_name(path.stem),
        stem=path.stem,
        origin=str(path),
        labels=labels,
        lines=lines,
        num_classes=given or max(max(labels) + 1, 1),
        root=request.root,
        paths=paths,
        line_kind="line",
        classes_known=given is not None,
    )


@register("imagenet_lt")
def read_imagenet_lt(request: SplitRequest) -> SampleList:
    return read_list_file(request, resolve_split_file(request))


@register("places_lt")
def read_places_lt(request: SplitRequest) -> SampleList:
    return read_list_file(request, resolve_split_file(request))
