"""An ImageFolder tree: `<root>[/<split>]/<class>/**/<image>`, classes sorted by name (torchvision's rule)."""

from __future__ import annotations

import os
from pathlib import Path

from ..samples import SampleList, SplitError, SplitRequest
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
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(tree / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = Path(dirpath).relative_to(tree)
            for fname in sorted(filenames):
                if fname.lower().endswith(IMG_EXTENSIONS) and not fname.startswith("."):
                    paths.append(str(rel / fname))
                    labels.append(label)
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
