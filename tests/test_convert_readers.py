"""Readers: each dataset's split format, read from fixtures written in the real formats, and their errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from pipelines.convert import READERS, SplitError, SplitRequest, SplitWarning, read_split
from pipelines.convert.readers.cifar import cifar_lt_counts, long_tail_indices
from pipelines.convert.readers.lists import split_name
from pipelines.convert.samples import check_empty_classes, check_labels, drop_duplicates
from tests.convert_util import chw_to_hwc, write_cifar, write_image_tree, write_inat_json, write_list


def test_registry_has_every_contract_dataset():
    assert {"imagenet_lt", "places_lt", "inat2018", "cifar10_lt", "cifar100_lt", "folder"} <= set(READERS)
    with pytest.raises(SplitError, match="unknown dataset 'imagenet'.*valid: cifar100_lt"):
        read_split(SplitRequest("imagenet", root=None))


@pytest.mark.parametrize("dataset", ["imagenet_lt", "places_lt", "inat2018"])
def test_list_reader_keeps_file_order_paths_labels_lines(tmp_path, dataset):
    items = write_image_tree(tmp_path, [3, 2, 1])
    rows = write_list(tmp_path / "My_split_val.txt", items, shuffle_seed=1)
    s = read_split(SplitRequest(dataset, tmp_path, split_file=tmp_path / "My_split_val.txt"))
    assert s.paths == [r for r, _ in rows]
    assert s.labels.tolist() == [lab for _, lab in rows]
    assert s.lines.tolist() == list(range(1, len(rows) + 1))
    assert (s.stem, s.split, s.num_classes, s.dataset) == ("My_split_val", "val", 3, dataset)
    assert s.class_counts() == [3, 2, 1]


def test_list_parser_blank_lines_spaces_in_paths_and_line_numbers(tmp_path):
    (tmp_path / "l.txt").write_bytes("\ufeffa/x y.jpg 1\r\n\n  b.jpg\t0  \n\nc.jpg 2\n".encode())  # BOM, CRLF
    s = read_split(SplitRequest("imagenet_lt", tmp_path, split_file=tmp_path / "l.txt"))
    assert s.paths == ["a/x y.jpg", "b.jpg", "c.jpg"]
    assert s.labels.tolist() == [1, 0, 2]
    assert s.lines.tolist() == [1, 3, 5]
    assert s.where(2) == f"{tmp_path / 'l.txt'} line 5"


@pytest.mark.parametrize(
    "text, match",
    [
        ("a.jpg 0\nb.jpg one\n", r"l.txt line 2: label 'one' is not an integer"),
        ("a.jpg 0\nlonely\n", r"l.txt line 2: expected '<relative/path> <label>'"),
        ("\n\n", r"lists no image"),
    ],
)
def test_list_parser_errors_name_file_and_line(tmp_path, text, match):
    (tmp_path / "l.txt").write_text(text)
    with pytest.raises(SplitError, match=match):
        read_split(SplitRequest("imagenet_lt", tmp_path, split_file=tmp_path / "l.txt"))


def test_missing_split_file_and_default_names(tmp_path):
    with pytest.raises(SplitError, match="nope.txt does not exist"):
        read_split(SplitRequest("imagenet_lt", tmp_path, split_file=tmp_path / "nope.txt"))
    with pytest.raises(SplitError, match="tried .*ImageNet_LT_train.txt"):
        read_split(SplitRequest("imagenet_lt", tmp_path, split="train"))
    (tmp_path / "Places_LT_test.txt").write_text("val/a/1.jpg 0\n")
    s = read_split(SplitRequest("places_lt", tmp_path, split="test"))
    assert (s.stem, s.split) == ("Places_LT_test", "test")
    assert split_name("iNaturalist18_train") == "train" and split_name("odd") == "odd"


def test_labels_out_of_range_name_lines(tmp_path):
    (tmp_path / "l.txt").write_text("a.jpg 0\nb.jpg 5\nc.jpg -1\n")
    s = read_split(SplitRequest("imagenet_lt", tmp_path, split_file=tmp_path / "l.txt", num_classes=3))
    with pytest.raises(
        SplitError, match=r"2 label\(s\) out of range 0..2: .*l.txt line 2: label 5; .*line 3: label -1"
    ):
        check_labels(s)


def test_empty_class_is_an_error_unless_allowed(tmp_path):
    (tmp_path / "l.txt").write_text("a.jpg 0\nb.jpg 2\n")
    s = read_split(SplitRequest("imagenet_lt", tmp_path, split_file=tmp_path / "l.txt"))
    with pytest.raises(SplitError, match=r"l.txt: 1 of 3 classes have no image \(labels 1\).*--allow-empty"):
        check_empty_classes(s.class_counts(), s.origin, allow=False)
    with pytest.warns(SplitWarning, match="have no image"):
        check_empty_classes(s.class_counts(), s.origin, allow=True)
    check_empty_classes(np.array([1, 2]), "x", allow=False)  # counts in, no image missing: no error


def test_duplicate_lines_warn_and_drop_or_conflict(tmp_path):
    (tmp_path / "l.txt").write_text("a.jpg 0\nb.jpg 1\na.jpg 0\n./b.jpg 1\n")
    s = read_split(SplitRequest("imagenet_lt", tmp_path, split_file=tmp_path / "l.txt"))
    with pytest.warns(SplitWarning, match=r"2 duplicate line\(s\) dropped.*line 3 repeats a.jpg"):
        d = drop_duplicates(s)
    assert d.paths == ["a.jpg", "b.jpg"] and d.lines.tolist() == [1, 2]
    (tmp_path / "l.txt").write_text("a.jpg 0\nb.jpg 1\na.jpg 1\n")
    s = read_split(SplitRequest("imagenet_lt", tmp_path, split_file=tmp_path / "l.txt"))
    with pytest.raises(
        SplitError, match=r"line 3: a.jpg is listed again with label 1, but .*line 1 gives it label 0"
    ):
        drop_duplicates(s)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no duplicate, no warning
        assert drop_duplicates(s.subset([0, 1])).paths == ["a.jpg", "b.jpg"]


# ---- iNaturalist 2018 --------------------------------------------------------------------------------------
def test_inat_json_joins_annotations_on_image_id(tmp_path):
    items = write_image_tree(tmp_path, [2, 3, 1, 2], sub="train_val2018/Plantae")
    rows = write_inat_json(tmp_path / "val2018.json", items, num_categories=5)
    doc = json.loads((tmp_path / "val2018.json").read_text())
    assert [a["image_id"] for a in doc["annotations"]] != [
        i["id"] for i in doc["images"]
    ]  # really out of order
    s = read_split(SplitRequest("inat2018", tmp_path, split="val"))  # finds val2018.json under --root
    assert s.paths == [r for r, _ in rows]
    assert s.labels.tolist() == [lab for _, lab in rows]
    assert s.num_classes == 5  # from `categories`, although category 4 has no image here
    assert (s.stem, s.split) == ("val2018", "val")
    assert s.where(0) == f"{tmp_path / 'val2018.json'} entry 1"


def test_inat_list_file(tmp_path):
    items = write_image_tree(tmp_path, [1, 2], sub="train_val2018/Fungi")
    rows = write_list(tmp_path / "iNaturalist18_train.txt", items)
    s = read_split(SplitRequest("inat2018", tmp_path, split="train"))
    assert s.stem == "iNaturalist18_train" and s.labels.tolist() == [lab for _, lab in rows]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d["annotations"].pop(), r"1 image\(s\) without annotation, first images\[\d+\]"),
        (lambda d: d.__setitem__("annotations", []), "unlabeled test set"),
        (
            lambda d: d["annotations"].append({"id": 9, "image_id": -5, "category_id": 0}),
            "image_id -5 is not in",
        ),
        (lambda d: d["annotations"].append({**d["annotations"][0], "category_id": 99}), "two categories"),
        (lambda d: d["images"].append(dict(d["images"][0])), "already used by images"),
        (lambda d: d.pop("images"), "no 'images' list"),
    ],
)
def test_inat_json_errors(tmp_path, mutate, match):
    write_inat_json(tmp_path / "train2018.json", write_image_tree(tmp_path, [2, 2]), num_categories=2)
    doc = json.loads((tmp_path / "train2018.json").read_text())
    mutate(doc)
    (tmp_path / "train2018.json").write_text(json.dumps(doc))
    with pytest.raises(SplitError, match=match):
        read_split(SplitRequest("inat2018", tmp_path, split_file=tmp_path / "train2018.json"))


# ---- CIFAR-LT ----------------------------------------------------------------------------------------------
def test_cifar_lt_count_profile():
    c100 = cifar_lt_counts(500, 100, 100)
    assert sum(c100) == 10_847
    assert c100[:3] == [500, 477, 455] and c100[-1] == 5
    shots = (sum(n > 100 for n in c100), sum(20 <= n <= 100 for n in c100), sum(n < 20 for n in c100))
    assert shots == (35, 35, 30)
    # The published sizes of the other standard splits (LDAM-DRW, BBN, ...).
    assert sum(cifar_lt_counts(500, 100, 50)) == 12_608
    assert sum(cifar_lt_counts(500, 100, 10)) == 19_573
    assert sum(cifar_lt_counts(5000, 10, 100)) == 12_406
    assert sum(cifar_lt_counts(5000, 10, 50)) == 13_996
    assert sum(cifar_lt_counts(5000, 10, 10)) == 20_431
    assert cifar_lt_counts(500, 100, 1) == [500] * 100
    with pytest.raises(SplitError, match="imb-ratio must be >= 1"):
        cifar_lt_counts(500, 100, 0.5)


def test_cifar_lt_selection_matches_ldam_drw():
    """The reference: IMBALANCECIFAR10.gen_imbalanced_data after np.random.seed(0)."""
    labels = np.random.default_rng(3).permutation(np.repeat(np.arange(10), 50))
    counts = cifar_lt_counts(50, 10, 10)
    np.random.seed(0)  # noqa: NPY002 (the reference code's own legacy global RNG)
    expected = []
    for the_class, n in zip(np.unique(labels), counts, strict=False):
        idx = np.where(labels == the_class)[0]
        np.random.shuffle(idx)  # noqa: NPY002
        expected.extend(idx[:n].tolist())
    assert long_tail_indices(labels, counts).tolist() == expected


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_reader_real_pickles(tmp_path, kind):
    written = write_cifar(tmp_path, kind, per_class_train=2, per_class_test=1)
    dataset = f"{kind}_lt"
    classes = 10 if kind == "cifar10" else 100
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if kind == "cifar10" else ["train"]
    data = np.concatenate([written[f][0] for f in train_files])
    labels = np.concatenate([written[f][1] for f in train_files])
    s = read_split(SplitRequest(dataset, tmp_path, split="train", imb_ratio=5))
    n_max = 10 if kind == "cifar10" else 2
    counts = cifar_lt_counts(n_max, classes, 5)
    assert s.class_counts() == counts and len(s) == sum(counts)
    assert s.lines.tolist() == long_tail_indices(labels, counts).tolist()
    assert np.array_equal(s.arrays, chw_to_hwc(data)[s.lines])  # CHW rows -> HWC pixels, the right rows
    assert np.array_equal(s.labels, labels[s.lines])
    # channel planes: R is the first 1024 bytes of a row
    assert s.arrays[0][0, 1, 0] == data[s.lines[0]][1] and s.arrays[0][0, 0, 2] == data[s.lines[0]][2048]
    assert (s.stem, s.split, s.num_classes, s.extra["imb_ratio"]) == (
        f"{dataset}_train",
        "train",
        classes,
        5.0,
    )
    assert s.class_names[0] == ("class0" if kind == "cifar10" else "fine0")

    with pytest.warns(SplitWarning, match="test stays balanced"):
        t = read_split(SplitRequest(dataset, tmp_path, split="test", imb_ratio=100))
    test_data, test_labels = written["test_batch" if kind == "cifar10" else "test"]
    assert t.labels.tolist() == list(test_labels) and np.array_equal(t.arrays, chw_to_hwc(test_data))
    assert t.class_counts() == [1] * classes and t.stem == f"{dataset}_test"


def test_cifar_reader_errors(tmp_path):
    with pytest.raises(SplitError, match="no CIFAR data under"):
        read_split(SplitRequest("cifar10_lt", tmp_path, split="train"))
    write_cifar(tmp_path, "cifar10", 1, 1)
    with pytest.raises(SplitError, match="--split must be train or test"):
        read_split(SplitRequest("cifar10_lt", tmp_path, split="val"))
    with pytest.raises(SplitError, match="not --split-file"):
        read_split(SplitRequest("cifar10_lt", tmp_path, split_file=tmp_path / "x.txt"))
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(SplitError, match="cannot read CIFAR pickle .*data_batch_3"):
        read_split(SplitRequest("cifar10_lt", tmp_path, split="train"))


# ---- ImageFolder -------------------------------------------------------------------------------------------
def test_folder_reader_sorted_classes(tmp_path):
    for name, n in (("zebra", 2), ("Apple", 1), ("mango", 3)):
        d = tmp_path / "train" / name
        d.mkdir(parents=True)
        for i in range(n):
            (d / f"{i}.JPG").write_bytes(b"x")
        (d / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "mango" / "sub").mkdir()
    (tmp_path / "train" / "mango" / "sub" / "deep.png").write_bytes(b"x")
    s = read_split(SplitRequest("folder", tmp_path, split="train"))
    assert s.class_names == ("Apple", "mango", "zebra")  # sorted by name, like torchvision's ImageFolder
    assert s.class_counts() == [1, 4, 2]
    assert "mango/sub/deep.png" in s.paths and s.stem == "folder_train"
    assert s.root == tmp_path / "train"
    with pytest.raises(SplitError, match="not a directory"):
        read_split(SplitRequest("folder", tmp_path, split="val"))


def test_folder_reader_follows_symlinks_but_not_loops_and_reads_each_file_once(tmp_path):
    tree = tmp_path / "train"
    for name in ("a", "b"):
        (tree / name).mkdir(parents=True)
        (tree / name / f"{name}0.jpg").write_bytes(b"x")
    shared = tmp_path / "elsewhere"  # datasets assembled from symlinks: followed
    shared.mkdir()
    (shared / "s.jpg").write_bytes(b"x")
    (tree / "a" / "linked").symlink_to(shared)
    (tree / "a" / "loop").symlink_to("..")  # back to the tree: b's images must not become a's
    (tree / "b" / "again.jpg").symlink_to(tree / "a" / "a0.jpg")  # the same file under a second name
    with pytest.warns(SplitWarning) as caught:
        s = read_split(SplitRequest("folder", tmp_path, split="train"))
    assert sorted(s.paths) == ["a/a0.jpg", "a/linked/s.jpg", "b/b0.jpg"]
    assert s.class_counts() == [2, 1]
    text = " | ".join(str(w.message) for w in caught)
    assert "a/loop" in text and "not followed" in text
    assert "b/again.jpg is a/a0.jpg" in text


@pytest.mark.parametrize(
    "line, kind", [("/etc/passwd 0", "is absolute"), ("../other/x.jpg 0", "leaves --root")]
)
def test_split_file_paths_stay_inside_root_unless_allowed(tmp_path, line, kind):
    (tmp_path / "l.txt").write_text(f"a.jpg 0\n{line}\n")
    with pytest.raises(SplitError, match=rf"l.txt line 2: path '.*' {kind}.*--allow-outside-root"):
        read_split(SplitRequest("imagenet_lt", tmp_path, split_file=tmp_path / "l.txt"))
    s = read_split(
        SplitRequest("imagenet_lt", tmp_path, split_file=tmp_path / "l.txt", allow_outside_root=True)
    )
    assert s.paths[1] == line.split()[0]
    (tmp_path / "ok.txt").write_text("sub/../a.jpg 0\n..a.jpg 1\n")  # `..` inside root, a name starting ..
    assert (
        read_split(SplitRequest("imagenet_lt", tmp_path, split_file=tmp_path / "ok.txt")).paths[1]
        == "..a.jpg"
    )


def test_inat_json_paths_stay_inside_root(tmp_path):
    doc = {
        "images": [{"id": 1, "file_name": "train/a.jpg"}, {"id": 2, "file_name": "../b.jpg"}],
        "annotations": [{"image_id": 1, "category_id": 0}, {"image_id": 2, "category_id": 0}],
    }
    (tmp_path / "train2018.json").write_text(json.dumps(doc))
    with pytest.raises(SplitError, match=r"train2018.json images\[1\]: path '../b.jpg' leaves --root"):
        read_split(SplitRequest("inat2018", tmp_path, split_file=tmp_path / "train2018.json"))
