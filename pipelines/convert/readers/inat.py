"""iNaturalist 2018: the official COCO-like JSON (`train2018.json`, `val2018.json`) or the iNaturalist18_*
lists."""

from __future__ import annotations

import json
from pathlib import Path

from ..samples import SampleList, SplitError, SplitRequest
from . import register
from .lists import check_inside_root, given_num_classes, read_list_file, resolve_split_file, split_name


@register("inat2018")
def read_inat2018(request: SplitRequest) -> SampleList:
    path = resolve_split_file(request)
    if path.suffix.lower() == ".json":
        return read_coco_json(request, path)
    return read_list_file(request, path)


def read_coco_json(request: SplitRequest, path: Path) -> SampleList:
    """Join `annotations` to `images` on `image_id` (the two lists need not be in the same order); the label
    is `category_id`. Samples keep the order of `images`; `lines` are 1-based entries of that list."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SplitError(f"cannot read {path}: {exc}") from None
    for key in ("images", "annotations"):
        if not isinstance(doc.get(key), list):
            raise SplitError(f"{path}: no '{key}' list (expected the official iNaturalist 2018 JSON)")
    images, annotations = doc["images"], doc["annotations"]
    if not images:
        raise SplitError(f"{path}: 'images' is empty")

    entry_of: dict[int, int] = {}
    for i, img in enumerate(images):
        try:
            image_id = img["id"]
            img["file_name"]
        except (KeyError, TypeError):
            raise SplitError(f"{path} images[{i}]: needs 'id' and 'file_name', got {img!r}") from None
        if image_id in entry_of:
            raise SplitError(
                f"{path} images[{i}]: image id {image_id} already used by images[{entry_of[image_id]}]"
            )
        entry_of[image_id] = i

    label_of: dict[int, int] = {}
    for k, ann in enumerate(annotations):
        try:
            image_id, category = ann["image_id"], ann["category_id"]
        except (KeyError, TypeError):
            raise SplitError(
                f"{path} annotations[{k}]: needs 'image_id' and 'category_id', got {ann!r}"
            ) from None
        if type(category) is not int:  # not int(): "1_0" would become 10, 3.7 would become 3, true 1
            raise SplitError(f"{path} annotations[{k}]: category_id {category!r} is not an integer")
        if image_id not in entry_of:
            raise SplitError(f"{path} annotations[{k}]: image_id {image_id} is not in 'images'")
        previous = label_of.setdefault(image_id, category)
        if previous != category:
            raise SplitError(
                f"{path} annotations[{k}]: image {image_id} has two categories, {previous} and {category}"
            )

    unlabeled = [i for i, img in enumerate(images) if img["id"] not in label_of]
    if unlabeled:
        i = unlabeled[0]
        hint = " (the unlabeled test set cannot be converted)" if len(unlabeled) == len(images) else ""
        raise SplitError(
            f"{path}: {len(unlabeled)} image(s) without annotation{hint}, first images[{i}] "
            f"(id {images[i]['id']}, {images[i]['file_name']})"
        )

    check_inside_root(
        request, path, [str(img["file_name"]) for img in images], [f"images[{i}]" for i in range(len(images))]
    )

    # The class count is known from `categories` (or --num-classes): a category_id beyond it is an error that
    # names its entry, never an extra class.
    category_ids = []
    for i, c in enumerate(doc.get("categories") or []):
        cid = c.get("id") if isinstance(c, dict) else None
        if type(cid) is not int:
            raise SplitError(f"{path} categories[{i}]: id {cid!r} is not an integer")
        category_ids.append(cid)
    given = given_num_classes(request)
    known = given or (max(category_ids) + 1 if category_ids else None)
    return SampleList(
        dataset=request.dataset,
        split=request.split or split_name(path.stem),
        stem=path.stem,
        origin=str(path),
        labels=[label_of[img["id"]] for img in images],
        lines=list(range(1, len(images) + 1)),
        num_classes=known or max(max(label_of.values()) + 1, 1),
        root=request.root,
        paths=[str(img["file_name"]) for img in images],
        line_kind="entry",
        classes_known=known is not None,
    )
