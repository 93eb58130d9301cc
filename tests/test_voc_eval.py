"""Tests of compress/voc_eval.py: hand-computed APs, and agreement with a loop-by-loop port of the VOC devkit."""

import json
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest

from compress.voc_eval import (
    METRIC_ALL_POINT,
    METRIC_VOC07,
    Detections,
    GroundTruth,
    evaluate_all,
    evaluate_detections,
    evaluate_size_ranges,
    pairwise_iou,
    source_of,
    voc_ap,
)

TOL = 1e-9

# Continuous-coordinate boxes far apart from each other (no overlaps between different letters).
A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 0.0, 30.0, 10.0]
C = [40.0, 0.0, 50.0, 10.0]
FAR = [100.0, 100.0, 110.0, 110.0]


def _gt(boxes: Sequence[Sequence[float]], labels: Optional[Sequence[int]] = None,
        difficult: Optional[Sequence[bool]] = None) -> GroundTruth:
    n = len(boxes)
    return GroundTruth(
        np.asarray(boxes, dtype=np.float64).reshape(n, 4),
        np.asarray(labels if labels is not None else [0] * n, dtype=np.int64),
        np.asarray(difficult if difficult is not None else [False] * n, dtype=bool),
    )


def _det(boxes: Sequence[Sequence[float]], scores: Sequence[float],
         labels: Optional[Sequence[int]] = None) -> Detections:
    n = len(boxes)
    return Detections(
        np.asarray(boxes, dtype=np.float64).reshape(n, 4),
        np.asarray(scores, dtype=np.float64),
        np.asarray(labels if labels is not None else [0] * n, dtype=np.int64),
    )


def _both(dets: Dict[str, Detections], gts: Dict[str, GroundTruth], classes: Sequence[str] = ("person",),
          **kwargs: float) -> Tuple[dict, dict]:
    return (evaluate_detections(dets, gts, classes, use_07_metric=True, **kwargs),
            evaluate_detections(dets, gts, classes, use_07_metric=False, **kwargs))


# --------------------------------------------------------------------------------------------- voc_ap


def test_pairwise_iou_by_hand() -> None:
    a = np.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 2.0]])
    b = np.array([[5.0, 0.0, 15.0, 10.0],   # half of a[0]: 50 / 150
                  [0.0, 0.0, 10.0, 10.0],   # a[0] itself; holds a[1] whole: 8 / 100
                  [10.0, 0.0, 20.0, 10.0],  # touches a[0] along x = 10: no overlap
                  [2.0, 1.0, 6.0, 3.0]])    # inside a[0]: 8 / 100; a[1]: overlap 2 x 1, union 8 + 8 - 2
    expected = np.array([[50 / 150, 1.0, 0.0, 8 / 100],
                         [0.0, 8 / 100, 0.0, 2 / 14]])
    iou = pairwise_iou(a, b)
    assert iou.shape == (2, 4) and iou.dtype == np.float64
    np.testing.assert_allclose(iou, expected, rtol=0, atol=TOL)
    np.testing.assert_allclose(pairwise_iou(b, a), expected.T, rtol=0, atol=TOL)
    assert pairwise_iou(a, np.zeros((0, 4))).shape == (2, 0)


def test_voc_ap_on_hand_computed_curve() -> None:
    # Ranked TP, FP, TP with npos=2: recall .5 .5 1, precision 1 .5 2/3.
    # 11-point: t=0..0.5 (6 thresholds) -> 1; t=0.6..1.0 (5) -> 2/3; AP = (6 + 10/3) / 11 = 28/33.
    # All-point: envelope 1 on (0, .5], 2/3 on (.5, 1]; AP = .5 * 1 + .5 * 2/3 = 5/6.
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2.0 / 3.0])
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx(28.0 / 33.0, abs=TOL)
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(5.0 / 6.0, abs=TOL)


def test_voc_ap_empty_and_mismatched() -> None:
    assert voc_ap(np.zeros(0), np.zeros(0), True) == 0.0
    assert voc_ap(np.zeros(0), np.zeros(0), False) == 0.0
    with pytest.raises(ValueError, match="length"):
        voc_ap(np.zeros(2), np.zeros(3), True)


def test_voc_ap_recall_exactly_on_an_11_point_threshold() -> None:
    # Recall 3/10 must reach t = 0.3: thresholds 0, .1, .2, .3 -> 4/11 (np.arange thresholds would give 3/11).
    assert voc_ap(np.array([0.1, 0.2, 3 / 10]), np.ones(3), True) == pytest.approx(4.0 / 11.0, abs=TOL)
    assert voc_ap(np.array([0.1, 0.2, 3 / 10]), np.ones(3), False) == pytest.approx(0.3, abs=TOL)


# --------------------------------------------------------------------------------------------- hand-computed scenes


def test_perfect_detector() -> None:
    gts = {"a": _gt([A, B]), "b": _gt([C])}
    dets = {"a": _det([B, A], [0.9, 0.8]), "b": _det([C], [0.1])}
    voc07, all_point = _both(dets, gts)
    assert voc07["ap"]["person"] == pytest.approx(1.0, abs=TOL)
    assert all_point["ap"]["person"] == pytest.approx(1.0, abs=TOL)
    assert voc07["map"] == pytest.approx(1.0, abs=TOL)
    assert voc07["npos"] == {"person": 3} and voc07["num_detections"] == {"person": 3}
    assert voc07["metric"] == METRIC_VOC07 and all_point["metric"] == METRIC_ALL_POINT
    assert voc07["iou_threshold"] == 0.5


def test_zero_true_positives() -> None:
    gts = {"a": _gt([A, B])}
    dets = {"a": _det([FAR, C, [0.0, 0.0, 10.0, 4.0]], [0.9, 0.8, 0.7])}  # the last one has IoU 0.4 with A
    voc07, all_point = _both(dets, gts)
    assert voc07["ap"]["person"] == 0.0
    assert all_point["ap"]["person"] == 0.0
    # No detections at all is AP 0 too (the class has positives).
    voc07, all_point = _both({}, gts)
    assert voc07["ap"]["person"] == 0.0 and all_point["ap"]["person"] == 0.0
    assert voc07["num_detections"] == {"person": 0}


def test_tp_fp_tp_ordering() -> None:
    # 2 GT; ranked TP (.9), FP (.8), TP (.7): the curve of test_voc_ap_on_hand_computed_curve -> 28/33 and 5/6.
    gts = {"a": _gt([A, B])}
    dets = {"a": _det([FAR, B, A], [0.8, 0.7, 0.9])}
    voc07, all_point = _both(dets, gts)
    assert voc07["ap"]["person"] == pytest.approx(28.0 / 33.0, abs=TOL)
    assert all_point["ap"]["person"] == pytest.approx(5.0 / 6.0, abs=TOL)


def test_duplicate_detections_are_false_positives() -> None:
    # 3 GT; ranked TP(A), FP(A again), FP(A again), TP(B).
    # recall 1/3 1/3 1/3 2/3, precision 1 1/2 1/3 1/2.
    # 11-point: t=0..0.3 (4) -> 1; t=.4,.5,.6 (3) -> 1/2; t=.7..1 (4) -> 0; AP = (4 + 1.5) / 11 = 0.5.
    # All-point: 1/3 * 1 + 1/3 * 1/2 + 1/3 * 0 = 0.5.
    gts = {"a": _gt([A, B, C])}
    dets = {"a": _det([A, A, [0.0, 0.0, 10.0, 9.0], B], [0.9, 0.8, 0.7, 0.6])}
    voc07, all_point = _both(dets, gts)
    assert voc07["ap"]["person"] == pytest.approx(0.5, abs=TOL)
    assert all_point["ap"]["person"] == pytest.approx(0.5, abs=TOL)


def test_best_object_is_searched_among_matched_ones_too() -> None:
    # GT A and A_LOW = [0,0,10,8] overlap. The second detection on A has IoU 1 with A (matched) and 0.8 with
    # A_LOW (unmatched): the devkit picks A, so it is a duplicate (FP) and A_LOW stays missed.
    # Ranked TP, FP with npos=2: recall .5 .5, precision 1 .5.
    # 11-point: t=0..0.5 (6) -> 1, the rest 0 -> 6/11. All-point: .5 * 1 = 0.5.
    a_low = [0.0, 0.0, 10.0, 8.0]
    gts = {"a": _gt([A, a_low])}
    dets = {"a": _det([A, A], [0.9, 0.8])}
    voc07, all_point = _both(dets, gts)
    assert voc07["ap"]["person"] == pytest.approx(6.0 / 11.0, abs=TOL)
    assert all_point["ap"]["person"] == pytest.approx(0.5, abs=TOL)


def test_detection_on_difficult_object_is_ignored() -> None:
    # A is normal, B is difficult: npos = 1. Two detections on B (.95, .9) are ignored (duplicates on a difficult
    # object too), the one on A (.8) is a TP: recall 1, precision 1 -> AP 1. Counted as FPs they would give 1/3.
    gts = {"a": _gt([A, B], difficult=[False, True])}
    dets = {"a": _det([B, B, A], [0.95, 0.9, 0.8])}
    voc07, all_point = _both(dets, gts)
    assert voc07["ap"]["person"] == pytest.approx(1.0, abs=TOL)
    assert all_point["ap"]["person"] == pytest.approx(1.0, abs=TOL)
    assert voc07["npos"] == {"person": 1}
    assert voc07["num_detections"] == {"person": 3}


def test_only_difficult_objects_give_nan() -> None:
    gts = {"a": _gt([A], difficult=[True])}
    voc07, all_point = _both({"a": _det([A], [0.9])}, gts)
    assert math.isnan(voc07["ap"]["person"]) and math.isnan(all_point["ap"]["person"])
    assert math.isnan(voc07["map"]) and voc07["npos"] == {"person": 0}


def test_iou_exactly_at_threshold_matches() -> None:
    # GT A is VOC (1,1,10,10) -> 100 px; the detection VOC (1,1,10,5) -> 50 px, all inside A: IoU = 50/100 = 0.5.
    # Second GT B and a detection twice its width: IoU = 100/200 = 0.5. The devkit's '>=' makes both TPs.
    gts = {"a": _gt([A, B])}
    dets = {"a": _det([[0.0, 0.0, 10.0, 5.0], [20.0, 0.0, 40.0, 10.0]], [0.9, 0.8])}
    voc07, all_point = _both(dets, gts)
    assert voc07["ap"]["person"] == pytest.approx(1.0, abs=TOL)
    assert all_point["ap"]["person"] == pytest.approx(1.0, abs=TOL)
    # Just above 0.5 both are FPs.
    voc07, all_point = _both(dets, gts, iou_threshold=0.5 + 1e-12)
    assert voc07["ap"]["person"] == 0.0 and all_point["ap"]["person"] == 0.0


def test_score_ties_keep_input_order() -> None:
    gts = {"a": _gt([A, B])}
    # All scores equal, input order FP, TP, TP: recall 0 .5 1, precision 0 .5 2/3.
    # 11-point: every threshold sees the point (1, 2/3) -> 2/3. All-point: envelope 2/3 on (0, 1] -> 2/3.
    voc07, all_point = _both({"a": _det([FAR, A, B], [0.5, 0.5, 0.5])}, gts)
    assert voc07["ap"]["person"] == pytest.approx(2.0 / 3.0, abs=TOL)
    assert all_point["ap"]["person"] == pytest.approx(2.0 / 3.0, abs=TOL)
    # Input order TP, TP, FP: precision 1 1 2/3 at recall .5 1 -> AP 1.
    voc07, all_point = _both({"a": _det([A, B, FAR], [0.5, 0.5, 0.5])}, gts)
    assert voc07["ap"]["person"] == pytest.approx(1.0, abs=TOL)
    assert all_point["ap"]["person"] == pytest.approx(1.0, abs=TOL)
    # Across images the order of the detections mapping decides: the FP of image "z" listed first ranks first.
    gts2 = {"a": _gt([A, B]), "z": _gt([])}
    dets2 = {"z": _det([A], [0.5]), "a": _det([A, B], [0.5, 0.5])}
    voc07, all_point = _both(dets2, gts2)
    assert voc07["ap"]["person"] == pytest.approx(2.0 / 3.0, abs=TOL)
    assert all_point["ap"]["person"] == pytest.approx(2.0 / 3.0, abs=TOL)


def test_class_absent_from_ground_truth_is_nan_and_left_out_of_map() -> None:
    gts = {"a": _gt([A, B], labels=[0, 0])}
    dets = {"a": _det([A, FAR, B, C], [0.9, 0.8, 0.7, 0.6], labels=[0, 0, 0, 1])}
    voc07, all_point = _both(dets, gts, classes=("person", "car"))
    assert math.isnan(voc07["ap"]["car"]) and math.isnan(all_point["ap"]["car"])
    assert voc07["npos"] == {"person": 2, "car": 0}
    assert voc07["num_detections"] == {"person": 3, "car": 1}
    # person is TP, FP, TP -> 28/33 and 5/6, and it is the whole mAP.
    assert voc07["map"] == pytest.approx(28.0 / 33.0, abs=TOL)
    assert all_point["map"] == pytest.approx(5.0 / 6.0, abs=TOL)


def test_two_classes() -> None:
    # person: A, detected once (TP) -> AP 1. car: B and C; ranked car detections TP(B), FP (on the person A: other
    # classes never match), TP(C) -> 28/33 and 5/6. mAP = (1 + 28/33) / 2 = 61/66 and (1 + 5/6) / 2 = 11/12.
    gts = {"a": _gt([A, B, C], labels=[0, 1, 1])}
    dets = {"a": _det([A, B, A, C], [0.6, 0.9, 0.8, 0.7], labels=[0, 1, 1, 1])}
    voc07, all_point = _both(dets, gts, classes=("person", "car"))
    assert voc07["ap"]["person"] == pytest.approx(1.0, abs=TOL)
    assert voc07["ap"]["car"] == pytest.approx(28.0 / 33.0, abs=TOL)
    assert all_point["ap"]["car"] == pytest.approx(5.0 / 6.0, abs=TOL)
    assert voc07["map"] == pytest.approx(61.0 / 66.0, abs=TOL)
    assert all_point["map"] == pytest.approx(11.0 / 12.0, abs=TOL)
    assert voc07["npos"] == {"person": 1, "car": 2}


def test_detection_on_image_without_ground_truth_is_false_positive() -> None:
    # Ranked FP (image "empty", .9), TP (.8); npos 1: recall 0 1, precision 0 .5 -> 11-point .5, all-point .5.
    gts = {"a": _gt([A]), "empty": _gt([])}
    dets = {"empty": _det([A], [0.9]), "a": _det([A], [0.8])}
    voc07, all_point = _both(dets, gts)
    assert voc07["ap"]["person"] == pytest.approx(0.5, abs=TOL)
    assert all_point["ap"]["person"] == pytest.approx(0.5, abs=TOL)


def test_recall_of_three_tenths_reaches_threshold_point_three() -> None:
    # 10 GT, 3 TPs: recall .1 .2 .3 with precision 1 -> 11-point 4/11, all-point 0.3.
    boxes = [[20.0 * k, 0.0, 20.0 * k + 10.0, 10.0] for k in range(10)]
    voc07, all_point = _both({"a": _det(boxes[:3], [0.9, 0.8, 0.7])}, {"a": _gt(boxes)})
    assert voc07["ap"]["person"] == pytest.approx(4.0 / 11.0, abs=TOL)
    assert all_point["ap"]["person"] == pytest.approx(0.3, abs=TOL)


def test_invalid_inputs_are_refused_with_the_image_named() -> None:
    gts = {"a": _gt([A])}
    with pytest.raises(ValueError, match="'ghost_007'"):
        evaluate_detections({"ghost_007": _det([A], [0.9])}, gts, ["person"])
    with pytest.raises(ValueError, match="'a'.*labels"):
        evaluate_detections({"a": _det([A], [0.9], labels=[1])}, gts, ["person"])
    with pytest.raises(ValueError, match="'a'.*scores"):
        evaluate_detections({"a": _det([A], [float("nan")])}, gts, ["person"])
    with pytest.raises(ValueError, match="'a'.*shape"):
        evaluate_detections({"a": Detections(np.zeros((1, 5)), np.ones(1), np.zeros(1, np.int64))}, gts, ["person"])
    with pytest.raises(ValueError, match="iou_threshold"):
        evaluate_detections({}, gts, ["person"], iou_threshold=0.0)


def test_result_is_json_serialisable() -> None:
    gts = {"coco_1": _gt([A, B], labels=[0, 0]), "mot15_x_2": _gt([C], labels=[0])}
    dets = {"coco_1": _det([A, C], [0.9, 0.8], labels=[0, 1])}
    result = evaluate_all(dets, gts, ["person", "car"])
    text = json.dumps(result)  # nan becomes NaN, which json.loads reads back
    loaded = json.loads(text)
    assert set(loaded) == {METRIC_VOC07, METRIC_ALL_POINT, "per_source"}
    assert loaded[METRIC_VOC07]["npos"] == {"person": 3, "car": 0}
    assert math.isnan(loaded[METRIC_ALL_POINT]["ap"]["car"])
    for metric in (METRIC_VOC07, METRIC_ALL_POINT):
        assert type(result[metric]["map"]) is float
        assert all(type(v) is float for v in result[metric]["ap"].values())
        assert all(type(v) is int for v in result[metric]["npos"].values())


# --------------------------------------------------------------------------------------------- per source


def test_source_of() -> None:
    assert source_of("mot15_TUD-Campus_000001") == "mot15"
    assert source_of("coco_000000000139") == "coco"
    assert source_of("pennfudan_FudanPed00001") == "pennfudan"
    assert source_of("000005") is None
    assert source_of("_000005") is None


def test_per_source_grouping() -> None:
    gts = {
        "coco_000000000139": _gt([A]),
        "mot15_TUD-Campus_000001": _gt([A, B]),
        "coco_000000000285": _gt([B]),
        "pennfudan_FudanPed00001": _gt([C]),
    }
    dets = {
        "pennfudan_FudanPed00001": _det([FAR], [0.95]),
        "mot15_TUD-Campus_000001": _det([A, FAR, B], [0.9, 0.8, 0.7]),
        "coco_000000000139": _det([A], [0.85]),
        "coco_000000000285": _det([B], [0.75]),
    }
    result = evaluate_all(dets, gts, ["person"])
    # Overall, npos 5, ranked F(.95) T(.9) T(.85) F(.8) T(.75) T(.7):
    # recall 0 .2 .4 .4 .6 .8, precision 0 1/2 2/3 1/2 3/5 2/3.
    # 11-point: t=0..0.8 (9 thresholds) -> 2/3, t=.9, 1 -> 0: AP = 6/11. All-point: 2/3 over recall (0, .8] -> 8/15.
    assert result[METRIC_VOC07]["ap"]["person"] == pytest.approx(6.0 / 11.0, abs=TOL)
    assert result[METRIC_ALL_POINT]["ap"]["person"] == pytest.approx(8.0 / 15.0, abs=TOL)
    assert result[METRIC_VOC07] == evaluate_detections(dets, gts, ["person"], use_07_metric=True)
    assert result[METRIC_ALL_POINT] == evaluate_detections(dets, gts, ["person"], use_07_metric=False)

    per_source = result["per_source"]
    assert list(per_source) == ["coco", "mot15", "pennfudan"]
    assert {s: per_source[s]["num_images"] for s in per_source} == {"coco": 2, "mot15": 1, "pennfudan": 1}
    assert per_source["coco"][METRIC_VOC07]["ap"]["person"] == pytest.approx(1.0, abs=TOL)
    assert per_source["coco"][METRIC_ALL_POINT]["ap"]["person"] == pytest.approx(1.0, abs=TOL)
    assert per_source["coco"][METRIC_VOC07]["npos"] == {"person": 2}
    assert per_source["mot15"][METRIC_VOC07]["ap"]["person"] == pytest.approx(28.0 / 33.0, abs=TOL)
    assert per_source["mot15"][METRIC_ALL_POINT]["ap"]["person"] == pytest.approx(5.0 / 6.0, abs=TOL)
    assert per_source["pennfudan"][METRIC_VOC07]["ap"]["person"] == 0.0
    assert per_source["pennfudan"][METRIC_ALL_POINT]["ap"]["person"] == 0.0


def test_per_source_empty_without_two_prefixed_sources() -> None:
    dets = {"coco_1": _det([A], [0.9])}
    assert evaluate_all(dets, {"coco_1": _gt([A]), "coco_2": _gt([B])}, ["person"])["per_source"] == {}
    assert evaluate_all(dets, {"coco_1": _gt([A]), "000005": _gt([B])}, ["person"])["per_source"] == {}
    with pytest.raises(ValueError, match="'mot15_x'"):
        evaluate_all({"mot15_x": _det([A], [0.9])}, {"coco_1": _gt([A]), "voc_2": _gt([B])}, ["person"])


# --------------------------------------------------------------------------------------------- devkit port

IntBox = Tuple[int, int, int, int]  # VOC xmin, ymin, xmax, ymax: 1-based inclusive pixels


def _matlab_max(values: List[float]) -> Optional[float]:
    """MATLAB's max over a vector: NaN entries are skipped; [] for an empty vector (None here)."""
    finite = [v for v in values if not math.isnan(v)]
    if not values:
        return None
    # NOTE: MATLAB returns NaN when every entry is NaN (every detection of the class ignored as difficult);
    # compress.voc_eval defines that case as precision 0, and so does this port.
    return max(finite) if finite else 0.0


def _devkit_ap(
    gt_objects: Dict[str, List[Tuple[int, IntBox, bool]]],
    det_rows: List[Tuple[str, int, float, IntBox]],
    class_index: int,
    minoverlap: float,
    use_07_metric: bool,
) -> float:
    """A line-by-line port of VOCevaldet.m (VOC2007 11-point AP) and VOCap.m (all-point), with +1 integer boxes.

    ``det_rows`` is the results file: (image id, class, confidence, box) in file order.
    """
    # load ground truth objects of the class
    gt: Dict[str, dict] = {}
    npos = 0
    for image_id, objects in gt_objects.items():
        bbs = [box for label, box, _ in objects if label == class_index]
        diff = [difficult for label, _, difficult in objects if label == class_index]
        gt[image_id] = {"BB": bbs, "diff": diff, "det": [False] * len(bbs)}
        npos += sum(1 for d in diff if not d)
    if npos == 0:
        return math.nan
    ids = [row[0] for row in det_rows if row[1] == class_index]
    confidence = [row[2] for row in det_rows if row[1] == class_index]
    BB = [row[3] for row in det_rows if row[1] == class_index]

    # sort detections by decreasing confidence ([sc,si]=sort(-confidence); MATLAB's sort is stable, so is sorted)
    si = sorted(range(len(confidence)), key=lambda d: -confidence[d])
    ids = [ids[d] for d in si]
    BB = [BB[d] for d in si]

    # assign detections to ground truth objects
    nd = len(confidence)
    tp = [0] * nd
    fp = [0] * nd
    for d in range(nd):
        i = ids[d]
        bb = BB[d]
        ovmax = -math.inf
        jmax = -1
        for j in range(len(gt[i]["BB"])):
            bbgt = gt[i]["BB"][j]
            bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]), min(bb[3], bbgt[3])]
            iw = bi[2] - bi[0] + 1
            ih = bi[3] - bi[1] + 1
            if iw > 0 and ih > 0:
                # compute overlap as area of intersection / area of union
                ua = ((bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                      + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1)
                      - iw * ih)
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax = ov
                    jmax = j
        # assign detection as true positive/don't care/false positive
        if ovmax >= minoverlap:
            if not gt[i]["diff"][jmax]:
                if not gt[i]["det"][jmax]:
                    tp[d] = 1  # true positive
                    gt[i]["det"][jmax] = True
                else:
                    fp[d] = 1  # false positive (multiple detection)
        else:
            fp[d] = 1  # false positive

    # compute precision/recall
    rec: List[float] = []
    prec: List[float] = []
    tp_sum = fp_sum = 0
    for d in range(nd):
        tp_sum += tp[d]
        fp_sum += fp[d]
        rec.append(tp_sum / npos)
        prec.append(tp_sum / (tp_sum + fp_sum) if tp_sum + fp_sum else math.nan)  # MATLAB 0/0 = NaN

    if use_07_metric:
        ap = 0.0
        for k in range(11):  # t=0:0.1:1
            t = k / 10
            p = _matlab_max([prec[n] for n in range(nd) if rec[n] >= t])
            if p is None:
                p = 0.0
            ap = ap + p / 11
        return ap

    # VOCap.m
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = mpre[i + 1] if math.isnan(mpre[i]) else max(mpre[i], mpre[i + 1])
    ap = 0.0
    for i in range(1, len(mrec)):
        if mrec[i] != mrec[i - 1]:
            ap += (mrec[i] - mrec[i - 1]) * mpre[i]
    return ap


def _random_scene(rng: np.random.Generator, num_classes: int) -> Tuple[
        Dict[str, List[Tuple[int, IntBox, bool]]], List[Tuple[str, int, float, IntBox]]]:
    """Integer VOC boxes crowded on a small canvas, so overlaps, IoU ties and IoU of exactly 0.5 happen."""

    def box(xmin: int, ymin: int, w: int, h: int) -> IntBox:
        return (xmin, ymin, xmin + max(w, 1) - 1, ymin + max(h, 1) - 1)

    def random_box(extent: int) -> IntBox:
        return box(int(rng.integers(1, extent)), int(rng.integers(1, extent)),
                   int(rng.integers(2, 16)), int(rng.integers(2, 16)))

    gt_objects: Dict[str, List[Tuple[int, IntBox, bool]]] = {}
    det_rows: List[Tuple[str, int, float, IntBox]] = []
    for n in range(int(rng.integers(1, 5))):
        image_id = f"img{n}"
        objects = []
        for _ in range(int(rng.integers(0, 6))):
            b = random_box(30)
            if objects and rng.random() < 0.1:
                b = objects[-1][1]  # an exact duplicate object: ties in IoU
            objects.append((int(rng.integers(num_classes)), b, bool(rng.random() < 0.25)))
        gt_objects[image_id] = objects
        for label, (x1, y1, x2, y2), _ in objects:
            for _ in range(int(rng.integers(0, 3))):
                jx, jy = int(rng.integers(-3, 4)), int(rng.integers(-3, 4))
                w, h = x2 - x1 + 1 + int(rng.integers(-3, 4)), y2 - y1 + 1 + int(rng.integers(-3, 4))
                det_label = label if rng.random() < 0.85 else int(rng.integers(num_classes))
                det_rows.append((image_id, det_label, int(rng.integers(0, 8)) / 8, box(x1 + jx, y1 + jy, w, h)))
        for _ in range(int(rng.integers(0, 3))):
            b = random_box(40)
            det_rows.append((image_id, int(rng.integers(num_classes)), int(rng.integers(0, 8)) / 8, b))
    # Interleave images in the results file, like a detector writing several files' rows out of order.
    order = rng.permutation(len(det_rows))
    return gt_objects, [det_rows[k] for k in order]


def _to_continuous(boxes: List[IntBox]) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64).reshape(len(boxes), 4)
    array[:, :2] -= 1.0  # x1 = xmin - 1, y1 = ymin - 1; x2 = xmax, y2 = ymax
    return array


def _ours_from_scene(gt_objects: Dict[str, List[Tuple[int, IntBox, bool]]],
                     det_rows: List[Tuple[str, int, float, IntBox]]) -> Tuple[
        Dict[str, Detections], Dict[str, GroundTruth]]:
    gts = {
        image_id: GroundTruth(_to_continuous([o[1] for o in objects]),
                              np.asarray([o[0] for o in objects], dtype=np.int64),
                              np.asarray([o[2] for o in objects], dtype=bool))
        for image_id, objects in gt_objects.items()
    }
    # Grouping by image must keep ties in results-file order: images in order of first appearance, rows in order.
    by_image: Dict[str, List[Tuple[str, int, float, IntBox]]] = {}
    for row in det_rows:
        by_image.setdefault(row[0], []).append(row)
    dets = {
        image_id: Detections(_to_continuous([r[3] for r in rows]),
                             np.asarray([r[2] for r in rows], dtype=np.float64),
                             np.asarray([r[1] for r in rows], dtype=np.int64))
        for image_id, rows in by_image.items()
    }
    return dets, gts


def _tie_safe_rows(det_rows: List[Tuple[str, int, float, IntBox]]) -> List[Tuple[str, int, float, IntBox]]:
    """The results file reordered so that grouping it by image does not change the order of any score tie."""
    first_seen: Dict[str, int] = {}
    for row in det_rows:
        first_seen.setdefault(row[0], len(first_seen))
    return sorted(det_rows, key=lambda row: first_seen[row[0]])  # stable: rows of an image keep their order


def test_agrees_with_devkit_port_on_random_scenes() -> None:
    rng = np.random.default_rng(20240607)
    classes = ["person", "car", "dog"]
    compared = 0
    outcomes = {"exact_threshold": 0, "nan": 0}
    for scene in range(300):
        gt_objects, det_rows = _random_scene(rng, len(classes))
        det_rows = _tie_safe_rows(det_rows)
        dets, gts = _ours_from_scene(gt_objects, det_rows)
        threshold = 0.5 if scene % 3 else 0.7
        for use_07 in (True, False):
            ours = evaluate_detections(dets, gts, classes, iou_threshold=threshold, use_07_metric=use_07)
            expected_aps = []
            for c, name in enumerate(classes):
                expected = _devkit_ap(gt_objects, det_rows, c, threshold, use_07)
                expected_aps.append(expected)
                got = ours["ap"][name]
                if math.isnan(expected):
                    outcomes["nan"] += 1
                    assert math.isnan(got), (scene, name, use_07)
                else:
                    assert got == pytest.approx(expected, abs=TOL), (scene, name, use_07)
                compared += 1
            finite = [ap for ap in expected_aps if not math.isnan(ap)]
            if finite:
                assert ours["map"] == pytest.approx(sum(finite) / len(finite), abs=TOL)
            else:
                assert math.isnan(ours["map"])
        for image_id, label, _, (x1, y1, x2, y2) in det_rows:
            for gt_label, (gx1, gy1, gx2, gy2), _ in gt_objects[image_id]:
                iw, ih = min(x2, gx2) - max(x1, gx1) + 1, min(y2, gy2) - max(y1, gy1) + 1
                if label == gt_label and iw > 0 and ih > 0:
                    union = (x2 - x1 + 1) * (y2 - y1 + 1) + (gx2 - gx1 + 1) * (gy2 - gy1 + 1) - iw * ih
                    outcomes["exact_threshold"] += int(2 * iw * ih == union and threshold == 0.5)
    assert compared == 300 * 2 * len(classes)
    # The scenes do reach the corner cases (IoU exactly 0.5, classes without positives).
    assert outcomes["exact_threshold"] > 0 and outcomes["nan"] > 0


def test_devkit_port_counts_tp_fp_and_ignored_like_hand_cases() -> None:
    # Guard for the port itself: the hand case of test_tp_fp_tp_ordering in VOC integer boxes.
    gt_objects = {"a": [(0, (1, 1, 10, 10), False), (0, (21, 1, 30, 10), False), (0, (41, 1, 50, 10), True)]}
    det_rows = [("a", 0, 0.95, (41, 1, 50, 10)), ("a", 0, 0.9, (1, 1, 10, 10)),
                ("a", 0, 0.8, (101, 101, 110, 110)), ("a", 0, 0.7, (21, 1, 30, 10))]
    assert _devkit_ap(gt_objects, det_rows, 0, 0.5, True) == pytest.approx(28.0 / 33.0, abs=TOL)
    assert _devkit_ap(gt_objects, det_rows, 0, 0.5, False) == pytest.approx(5.0 / 6.0, abs=TOL)


# ------------------------------------------------------------------------------------------ recall and size ranges

SMALL = [0.0, 0.0, 4.0, 8.0]  # height 8
LARGE = [20.0, 0.0, 40.0, 40.0]  # height 40
LARGE2 = [50.0, 0.0, 70.0, 40.0]


def _size_scene():
    gts = {"a": _gt([SMALL, LARGE, LARGE2])}
    dets = {"a": _det([SMALL, FAR, LARGE], [0.9, 0.8, 0.7])}
    heights = {"a": np.array([8.0, 40.0, 40.0])}
    return gts, dets, heights


def test_recall_is_the_share_of_positives_found() -> None:
    gts, dets, _ = _size_scene()
    voc07, all_point = _both(dets, gts)
    # Ranked TP, FP, TP over 3 positives.
    assert voc07["recall"] == {"person": pytest.approx(2.0 / 3.0, abs=TOL)}
    assert all_point["recall"] == voc07["recall"]
    assert math.isnan(evaluate_detections(dets, {"a": _gt([A], difficult=[True])}, ["person"])["recall"]["person"])


def test_size_ranges_ignore_objects_outside_the_range() -> None:
    gts, dets, heights = _size_scene()
    small, large = evaluate_size_ranges(dets, gts, ["person"], heights, [(0.0, 16.0), (16.0, math.inf)])
    # [0, 16): only SMALL counts; the detection on LARGE is ignored (not an FP): ranked TP, FP -> AP 1, recall 1.
    assert small["npos"] == {"person": 1}
    assert small["ap"]["person"] == pytest.approx(1.0, abs=TOL)
    assert small["recall"]["person"] == pytest.approx(1.0, abs=TOL)
    # [16, inf): LARGE and LARGE2 count; the detection on SMALL is ignored: ranked FP (.8), TP (.7) -> recall 0, 1/2,
    # precision 0, 1/2; 11-point: t = 0..0.5 (6 points) at 1/2 -> 3/11.
    assert large["npos"] == {"person": 2}
    assert large["ap"]["person"] == pytest.approx(3.0 / 11.0, abs=TOL)
    assert large["recall"]["person"] == pytest.approx(0.5, abs=TOL)
    all_point = evaluate_size_ranges(dets, gts, ["person"], heights, [(16.0, math.inf)], use_07_metric=False)[0]
    assert all_point["ap"]["person"] == pytest.approx(0.25, abs=TOL)
    # A range that holds every object is the plain evaluation.
    whole = evaluate_size_ranges(dets, gts, ["person"], heights, [(0.0, math.inf)])[0]
    assert whole == evaluate_detections(dets, gts, ["person"])
    with pytest.raises(ValueError, match="image 'a': 2 sizes for 3 objects"):
        evaluate_size_ranges(dets, gts, ["person"], {"a": np.array([8.0, 40.0])}, [(0.0, 16.0)])
