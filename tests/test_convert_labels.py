"""Label typos traced to their line in every reader: a label far out of range names its line (the class
count given or inferred), one too high never makes an extra class when the count is known, and only plain
integers are labels (`int()` would read `1_0` as 10)."""

from __future__ import annotations

import json
import pickle
import re

import pytest

from pipelines.convert import SplitError, SplitRequest, read_split
from pipelines.convert.samples import check_empty_classes, check_labels, class_count_hint
from tests.convert_util import write_cifar, write_image_tree, write_inat_json


def test_inferred_class_count_names_the_line_of_the_highest_label(tmp_path):
    """A typo far out of range (99 for 1) without --num-classes: the empty-class error names its line."""
    (tmp_path / "l.txt").write_text("a.jpg 0\nb.jpg 1\nc.jpg 99\nd.jpg 2\n")
    s = read_split(SplitRequest("imagenet_lt", tmp_path, split_file=tmp_path / "l.txt"))
    assert s.num_classes == 100 and not s.classes_known
    hint = class_count_hint(s)
    assert f"label 99 is at {tmp_path / 'l.txt'} line 3" in hint and "--num-classes" in hint
    with pytest.raises(SplitError, match=r"96 of 100 classes have no image .*label 99 is at .*l.txt line 3"):
        check_empty_classes(s.class_counts(), s.origin, False, hint)
    given = read_split(SplitRequest("imagenet_lt", tmp_path, split_file=tmp_path / "l.txt", num_classes=3))
    assert given.classes_known and class_count_hint(given) == ""
    with pytest.raises(SplitError, match=r"l.txt line 3: label 99"):
        check_labels(given)


@pytest.mark.parametrize("label", ["1_0", "+1", "\u0661", "1.0", "0x1", "１"])
def test_list_labels_are_plain_ascii_integers(tmp_path, label):
    """int() reads `1_0` as 10 and takes `+1`, Arabic-Indic and full-width digits; a split list does not."""
    (tmp_path / "l.txt").write_text(f"a.jpg 0\nb.jpg {label}\n", encoding="utf-8")
    with pytest.raises(SplitError, match=re.escape(f"l.txt line 2: label '{label}' is not an integer")):
        read_split(SplitRequest("imagenet_lt", tmp_path, split_file=tmp_path / "l.txt"))


def test_list_label_one_too_high_with_a_known_class_count(tmp_path):
    (tmp_path / "l.txt").write_text("a.jpg 0\nb.jpg 1\nc.jpg 2\n")
    s = read_split(SplitRequest("places_lt", tmp_path, split_file=tmp_path / "l.txt", num_classes=2))
    assert s.num_classes == 2  # no third class appears
    with pytest.raises(SplitError, match=r"1 label\(s\) out of range 0..1: .*l.txt line 3: label 2"):
        check_labels(s)
    with pytest.raises(SplitError, match="--num-classes must be >= 1, got 0"):
        read_split(SplitRequest("places_lt", tmp_path, split_file=tmp_path / "l.txt", num_classes=0))


@pytest.mark.parametrize("bad", ["3", 1.0, 2.7, True, None])
def test_inat_category_ids_must_be_json_integers(tmp_path, bad):
    write_inat_json(tmp_path / "train2018.json", write_image_tree(tmp_path, [2, 2]), num_categories=2)
    doc = json.loads((tmp_path / "train2018.json").read_text())
    doc["annotations"][1]["category_id"] = bad
    (tmp_path / "train2018.json").write_text(json.dumps(doc))
    with pytest.raises(
        SplitError, match=rf"train2018.json annotations\[1\]: category_id {bad!r} is not an int"
    ):
        read_split(SplitRequest("inat2018", tmp_path, split_file=tmp_path / "train2018.json"))


def test_inat_category_beyond_the_categories_list_is_an_error_not_an_extra_class(tmp_path):
    rows = write_inat_json(tmp_path / "val2018.json", write_image_tree(tmp_path, [2, 2]), num_categories=2)
    doc = json.loads((tmp_path / "val2018.json").read_text())
    image = doc["images"][2]
    next(a for a in doc["annotations"] if a["image_id"] == image["id"])["category_id"] = 2  # one too high
    (tmp_path / "val2018.json").write_text(json.dumps(doc))
    s = read_split(SplitRequest("inat2018", tmp_path, split="val"))
    assert s.num_classes == 2 and s.classes_known and len(rows) == 4
    with pytest.raises(SplitError, match=r"out of range 0..1: .*val2018.json entry 3: label 2"):
        check_labels(s)
    del doc["categories"]  # no list: the count is inferred, and an empty class would name the top label
    (tmp_path / "val2018.json").write_text(json.dumps(doc))
    assert not read_split(SplitRequest("inat2018", tmp_path, split="val")).classes_known


@pytest.mark.parametrize(
    "labels, match",
    [
        (lambda n: [10] + [0] * (n - 1), r"data_batch_2\[0\]: label 10 is out of range 0..9"),
        (lambda n: [0] * (n - 1) + [-1], r"data_batch_2\[\d+\]: label -1 is out of range"),
        (lambda n: [0, 1.5] + [0] * (n - 2), r"data_batch_2\[1\]: label 1.5 is not an integer"),
        (lambda n: [0, "1_0"] + [0] * (n - 2), r"data_batch_2\[1\]: label '1_0' is not an integer"),
    ],
)
def test_cifar_labels_are_checked_with_file_and_index(tmp_path, labels, match):
    """Out-of-range CIFAR labels used to vanish silently from the long-tailed training split."""
    write_cifar(tmp_path, "cifar10", 2, 1)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    d = pickle.loads(batch.read_bytes())
    d[b"labels"] = labels(len(d[b"labels"]))
    batch.write_bytes(pickle.dumps(d))
    with pytest.raises(SplitError, match=match):
        read_split(SplitRequest("cifar10_lt", tmp_path, split="train"))


def test_folder_labels_are_the_sorted_class_folders(tmp_path):
    """No label is typed in a folder tree: the count is the folder count, and --num-classes must agree."""
    for name, n in (("b", 2), ("a", 1)):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(n):
            (tmp_path / "train" / name / f"{i}.jpg").write_bytes(b"x")
    s = read_split(SplitRequest("folder", tmp_path, split="train"))
    assert s.classes_known and s.num_classes == 2 and sorted(s.labels.tolist()) == [0, 1, 1]
    with pytest.raises(SplitError, match="has 2 class folders, --num-classes says 3"):
        read_split(SplitRequest("folder", tmp_path, split="train", num_classes=3))
