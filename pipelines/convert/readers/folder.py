"""An ImageFolder tree: `<root>[/<split>]/<class>/**/<image>`, classes sorted by name (torchvision's rule).

Symlinks are followed (datasets are often assembled from them), but a symlinked folder that leads back to
one above it or already walked is skipped, and a file reached under two names is read once (its first name
in sorted walk order): each with a warning line.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..samples import SampleList, SplitError, SplitRequest, SplitWarning
from . import register

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@register("folder")
def read_folder(request: SplitRequest) -> SampleList:
    if request.split_file is not None:
        raise SplitError(
            "folder reads a class-per-folder tree: use --root DIR [--split NAME], not --split-file"
        )
    tree = request.root / request.split if request.split else request.root
    if not tree.is_dir():
        raise SplitError(f"folder: {tree} is not a directory")
    classes = sorted(e.name for e in os.scandir(tree) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise SplitError(f"folder: no class folders in {tree}")
    paths: list[str] = []
    labels: list[int] = []
    seen: dict[str, str] = {}  # real path -> the name it was first listed under
    loops: list[str] = []
    twice: list[tuple[str, str]] = []
    for label, name in enumerate(classes):
        visited: set[str] = set()  # real paths of the folders walked for this class: a symlink loop ends
        for dirpath, dirnames, filenames in os.walk(tree / name, followlinks=True):
            here = os.path.realpath(dirpath)
            visited.add(here)
            keep = []
            for d in sorted(d for d in dirnames if not d.startswith(".")):
                real = os.path.realpath(os.path.join(dirpath, d))
                if real in visited or os.path.commonpath([real, here]) == real:  # `loop -> ..`: an ancestor
                    loops.append(str(Path(dirpath, d).relative_to(tree)))
                else:
                    keep.append(d)
            dirnames[:] = keep
            rel = Path(dirpath).relative_to(tree)
            for fname in sorted(filenames):
                if fname.lower().endswith(IMG_EXTENSIONS) and not fname.startswith("."):
                    real = os.path.realpath(os.path.join(dirpath, fname))
                    if real in seen:
                        twice.append((str(rel / fname), seen[real]))
                        continue
                    seen[real] = str(rel / fname)
                    paths.append(str(rel / fname))
                    labels.append(label)
    if loops:
        warnings.warn(
            f"folder: {tree}: {len(loops)} symlinked folder(s) lead back to a folder above or already "
            f"walked, not followed: {', '.join(loops[:3])}{' ...' if len(loops) > 3 else ''}",
            SplitWarning,
            stacklevel=2,
        )
    if twice:
        first, other = twice[0]
        warnings.warn(
            f"folder: {tree}: {len(twice)} image(s) reached under a second name (symlinks) are read once, "
            f"e.g. {first} is {other}",
            SplitWarning,
            stacklevel=2,
        )
    if request.num_classes is not None and request.num_classes != len(classes):
        raise SplitError(
            f"folder: {tree} has {len(classes)} class folders, --num-classes says {request.num_classes}"
        )
    split = request.split or tree.name
    return SampleList(
        dataset="folder",
        split=split,
        stem=f"folder_{split}",
        origin=str(tree),
        labels=labels,
        lines=list(range(1, len(paths) + 1)),
        num_classes=len(classes),
        root=tree,
        paths=paths,
        line_kind="entry",
        class_names=tuple(classes),
    )
