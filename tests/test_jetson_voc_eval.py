"""jetson.voc_eval_lite (the device's VOC reader and AP50) against the host's compress/voc.py and compress/voc_eval.py:
the same ground truth from the same files, the same AP on random detections, on real data."""
from __future__ import annotations

import math

import numpy as np
import pytest

from compress import voc_eval as host_eval
from compress.voc import VOCDataset
from jetson import voc_eval_lite as lite
from tests.conftest import SHARED_DATA

PEDESTRIANS = SHARED_DATA / "pedestrians" / "VOCdevkit"
VOC_SAMPLE = SHARED_DATA / "voc2007-sample" / "VOCdevkit"


def _require(path):
    if not path.is_dir():
        pytest.fail(f"{path} is missing: the tests expect ../shared/data beside the repository")
    return path


@pytest.mark.parametrize("root, split, classes", [
    (PEDESTRIANS, "test", ("person",)),
    (VOC_SAMPLE, "trainval", ("person", "dog", "car", "chair")),
])
def test_ground_truth_identical_to_the_host_reader(root, split, classes):
    records, lite_gts = lite.read_voc_split(_require(root), split, classes=classes)
    host = VOCDataset(root, split=split, classes=classes)
    host_gts = host.ground_truths()
    assert [r.image_id for r in records] == [a.image_id for a in host.annotations]
    assert len(records) >= 6  # 233 test images of the pedestrians set, 6 trainval images of the VOC sample
    for image_id, gt in host_gts.items():
        mine = lite_gts[image_id]
        assert np.array_equal(mine.boxes, np.asarray(gt.boxes, dtype=np.float64)), image_id
        assert np.array_equal(mine.labels, np.asarray(gt.labels)) and np.array_equal(mine.difficult, gt.difficult)
    if root == VOC_SAMPLE:  # the genuine VOC files carry difficult flags: they must survive
        assert any(g.difficult.any() for g in lite_gts.values())


def _random_detections(ground_truths, num_classes, seed):
    rng = np.random.RandomState(seed)
    lite_dets, host_dets = {}, {}
    for index, (image_id, gt) in enumerate(ground_truths.items()):
        if index % 7 == 3:
            continue  # some images without detections
        jitter = gt.boxes + rng.uniform(-12, 12, size=gt.boxes.shape)
        noise = rng.uniform(0, 300, size=(rng.randint(0, 6), 2))
        noise = np.hstack([noise, noise + rng.uniform(10, 120, size=noise.shape)])
        boxes = np.vstack([jitter, noise]).reshape(-1, 4)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        scores = rng.choice([0.2, 0.5, 0.9], size=len(boxes)) if index % 2 else rng.uniform(0, 1, len(boxes))
        labels = np.concatenate([gt.labels, rng.randint(0, num_classes, len(noise))]).astype(np.int64)
        lite_dets[image_id] = lite.Detections(boxes, scores, labels)
        host_dets[image_id] = host_eval.Detections(boxes, scores, labels)
    return lite_dets, host_dets


@pytest.mark.parametrize("root, split, classes", [
    (PEDESTRIANS, "test", ("person",)),
    (VOC_SAMPLE, "trainval", ("person", "dog", "car", "chair")),
])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_identical_to_the_host_evaluator_on_random_detections(root, split, classes, seed):
    records, ground_truths = lite.read_voc_split(_require(root), split, classes=classes)
    host_gts = {i: host_eval.GroundTruth(g.boxes, g.labels, g.difficult) for i, g in ground_truths.items()}
    lite_dets, host_dets = _random_detections(ground_truths, len(classes), seed)
    mine = lite.evaluate_all(lite_dets, ground_truths, list(classes))
    theirs = host_eval.evaluate_all(host_dets, host_gts, list(classes))
    checked = 0
    for metric in ("voc07_11point", "all_point"):
        for name in classes:
            a, b = mine[metric]["ap"][name], theirs[metric]["ap"][name]
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9, (metric, name, a, b)
            checked += not math.isnan(a)
            assert mine[metric]["npos"][name] == theirs[metric]["npos"][name]
            assert mine[metric]["num_detections"][name] == theirs[metric]["num_detections"][name]
    assert checked >= 2 and 0.05 < mine["voc07_11point"]["map"] < 1.0  # a real, non-trivial comparison
    assert sorted(mine["per_source"]) == sorted(theirs["per_source"])
    for source, result in theirs["per_source"].items():
        for metric in ("voc07_11point", "all_point"):
            a, b = mine["per_source"][source][metric]["map"], result[metric]["map"]
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9


def test_hand_computed_ap():
    gts = {"a_1": lite.GroundTruth(np.array([[0, 0, 10, 10], [20, 20, 30, 30.0]]), np.array([0, 0]),
                                   np.array([False, False]))}
    # ranked: TP (IoU 1), FP (duplicate of the same object), TP -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    dets = {"a_1": lite.Detections(np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30.0]]),
                                   np.array([0.9, 0.8, 0.7]), np.array([0, 0, 0]))}
    result = lite.evaluate_detections(dets, gts, ["person"], use_07_metric=False)
    assert result["ap"]["person"] == pytest.approx(0.5 * 1.0 + 0.5 * (2.0 / 3.0))
    voc07 = lite.evaluate_detections(dets, gts, ["person"], use_07_metric=True)["ap"]["person"]
    assert voc07 == pytest.approx((6 * 1.0 + 5 * (2.0 / 3.0)) / 11.0)


def test_unreadable_voc_folders_name_the_file(tmp_path):
    with pytest.raises(lite.VOCError, match="VOC folder not found"):
        lite.read_voc_split(tmp_path / "missing")
    year = tmp_path / "VOCdevkit" / "VOC2007"
    (year / "Annotations").mkdir(parents=True)
    (year / "ImageSets" / "Main").mkdir(parents=True)
    with pytest.raises(lite.VOCError, match=r"test.txt: split file for split 'test' not found"):
        lite.read_voc_split(tmp_path)
    (year / "ImageSets" / "Main" / "test.txt").write_text("img1\n")
    (year / "Annotations" / "img1.xml").write_text("<annotation><size><width>10</width></size>")
    with pytest.raises(lite.VOCError, match=r"img1.xml: malformed XML"):
        lite.read_voc_split(tmp_path)
