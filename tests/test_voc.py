"""The VOC data layer on genuine PASCAL VOC2007 files, and its errors on bad input."""
from __future__ import annotations

import numpy as np
import pytest

from compress.voc import VOC_CLASSES, DataError, VOCDataset, load_image, read_split, resolve_data_root, resolve_year_dir

TRAINVAL = ["000005", "000007", "000009", "000032", "000033", "000039"]
TEST = ["000001", "000002", "000003", "000004", "000006", "000008", "000010"]


def test_official_split_lists(voc_sample):
    year = resolve_year_dir(voc_sample)
    assert year.name == "VOC2007"
    assert read_split(year, "trainval") == TRAINVAL
    assert read_split(year, "test") == TEST


def test_multiclass_boxes_flags_and_coordinates(voc_sample):
    ds = VOCDataset(voc_sample, "trainval", classes=VOC_CLASSES)
    ann = {a.image_id: a for a in ds.annotations}
    # 000005: five chairs, the 3rd and 5th difficult; the first box is (263,211,324,339) in the XML.
    a5 = ann["000005"]
    assert (a5.width, a5.height) == (500, 375)
    assert [VOC_CLASSES[i] for i in a5.labels] == ["chair"] * 5
    assert a5.difficult.tolist() == [False, False, True, False, True]
    np.testing.assert_allclose(a5.boxes[0], [262, 210, 324, 339])
    # 000009: horse + three persons; 000032: two aeroplanes + two persons.
    assert sorted(VOC_CLASSES[i] for i in ann["000009"].labels) == ["horse", "person", "person", "person"]
    assert sorted(VOC_CLASSES[i] for i in ann["000032"].labels) == ["aeroplane", "aeroplane", "person", "person"]
    assert ds.num_boxes() == 5 + 1 + 4 + 4 + 3 + 1
    assert len(ds) == 6


def test_class_subset_keeps_images_without_the_class(voc_sample):
    ds = VOCDataset(voc_sample, "test", classes=("person",))
    counts = {a.image_id: len(a.boxes) for a in ds.annotations}
    assert counts == {"000001": 1, "000002": 0, "000003": 0, "000004": 0, "000006": 0, "000008": 0, "000010": 1}
    a1 = ds.annotations[0]
    np.testing.assert_allclose(a1.boxes, [[7, 11, 352, 498]])  # XML 8,12,352,498 -> continuous
    assert a1.truncated.tolist() == [True] and a1.difficult.tolist() == [False]
    assert set(a1.labels.tolist()) == {0}


def test_difficult_flags_counted(voc_sample):
    ds = VOCDataset(voc_sample, "test", classes=("chair", "diningtable", "pottedplant"))
    a6 = next(a for a in ds.annotations if a.image_id == "000006")
    assert len(a6.boxes) == 8 and int(a6.difficult.sum()) == 4
    gt = ds.ground_truths()["000006"]
    assert gt.boxes.shape == (8, 4) and gt.difficult.sum() == 4


def test_images_decode_at_annotated_size(voc_sample):
    ds = VOCDataset(voc_sample, "trainval", classes=VOC_CLASSES)
    for a in ds.annotations:
        img = load_image(a.image_path, (a.width, a.height))
        assert img.shape == (a.height, a.width, 3) and img.dtype == np.uint8


def test_pedestrian_set_counts(pedestrians):
    tv = VOCDataset(pedestrians, "trainval")
    te = VOCDataset(pedestrians, "test")
    assert (len(tv), tv.num_boxes()) == (1322, 5009 + 1858 + 1156 + 254 + 337)
    assert (len(te), te.num_boxes()) == (233, 359 + 350 + 86)


def test_root_resolution(monkeypatch, tmp_path, voc_sample):
    monkeypatch.delenv("JETSON_COMPRESS_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root(None) == tmp_path / "data" / "VOCdevkit"
    monkeypatch.setenv("JETSON_COMPRESS_DATA", str(voc_sample))
    assert resolve_data_root(None) == voc_sample
    assert str(resolve_data_root("x/y")) == "x/y"  # --data wins over the environment
    # A folder that contains VOCdevkit, the VOCdevkit itself and the year folder all resolve to the year folder.
    year = resolve_year_dir(voc_sample)
    assert resolve_year_dir(voc_sample.parent) == year == resolve_year_dir(year)


# --- bad input: every case names the file and the problem ---------------------------------------------------

def _ann(root, image_id):
    return root / "VOC2007" / "Annotations" / f"{image_id}.xml"


def _corrupt(root, case):
    year = root / "VOC2007"
    if case == "malformed_xml":
        p = _ann(root, "000007")
        p.write_text(p.read_text()[:200])
        return p, "malformed XML"
    if case == "missing_image":
        p = year / "JPEGImages" / "000007.jpg"
        p.unlink()
        return p, "image file missing"
    if case == "unreadable_image":
        p = year / "JPEGImages" / "000007.jpg"
        p.write_bytes(b"this is not a jpeg")
        return p, "unreadable image"
    if case == "unknown_class":
        p = _ann(root, "000007")
        p.write_text(p.read_text().replace("<name>car</name>", "<name>spaceship</name>"))
        return p, "unknown class 'spaceship'"
    if case == "box_outside":
        p = _ann(root, "000007")
        p.write_text(p.read_text().replace("<xmax>500</xmax>", "<xmax>990</xmax>"))
        return p, "outside the"
    if case == "missing_annotation":
        p = _ann(root, "000007")
        p.unlink()
        return p, "annotation file missing"
    if case == "bad_number":
        p = _ann(root, "000007")
        p.write_text(p.read_text().replace("<xmax>500</xmax>", "<xmax>abc</xmax>"))
        return p, "not a number"
    raise AssertionError(case)


CASES = ["malformed_xml", "missing_image", "unreadable_image", "unknown_class", "box_outside",
         "missing_annotation", "bad_number"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_names_file_and_problem(voc_copy, case):
    path, problem = _corrupt(voc_copy, case)
    with pytest.raises(DataError) as err:
        VOCDataset(voc_copy, "trainval", classes=VOC_CLASSES)
    assert str(path) in str(err.value) and problem in str(err.value)


@pytest.mark.parametrize("case", CASES)
def test_skip_bad_counts_instead(voc_copy, case):
    _corrupt(voc_copy, case)
    with pytest.warns(UserWarning, match="skipped 1 bad image"):
        ds = VOCDataset(voc_copy, "trainval", classes=VOC_CLASSES, skip_bad=True)
    assert len(ds) == len(TRAINVAL) - 1 and list(ds.skipped) == ["000007"]


def test_empty_split_and_missing_split(voc_copy):
    main = voc_copy / "VOC2007" / "ImageSets" / "Main"
    (main / "val.txt").write_text("\n\n")
    with pytest.raises(DataError, match="split 'val' is empty"):
        VOCDataset(voc_copy, "val")
    with pytest.raises(DataError, match="split file for split 'nosuch' not found"):
        VOCDataset(voc_copy, "nosuch")


def test_unreadable_image_detected_at_decode(voc_copy):
    # A file with a JPEG header but garbage body passes the cheap header check and fails when decoded.
    p = voc_copy / "VOC2007" / "JPEGImages" / "000007.jpg"
    p.write_bytes(b"\xff\xd8\xff" + b"\x00" * 64)
    ds = VOCDataset(voc_copy, "trainval", classes=VOC_CLASSES)
    ann = next(a for a in ds.annotations if a.image_id == "000007")
    with pytest.raises(DataError, match="unreadable image") as err:
        load_image(ann.image_path)
    assert str(p) in str(err.value)


def test_not_a_vocdevkit(tmp_path):
    with pytest.raises(DataError, match="no VOC year folder"):
        VOCDataset(tmp_path, "trainval")
    with pytest.raises(DataError, match="does not exist"):
        VOCDataset(tmp_path / "nope", "trainval")
