"""NMS: hand-made cases with exact keep lists, and torch / numpy / pure-Python agreement on random sets.

Suppression rule under test: a box is dropped when IoU with a kept box is strictly greater than the threshold.
"""

import numpy as np
import pytest
import torch

from compress import nms as torch_nms
from runtime import nms as np_nms


# --- helpers -------------------------------------------------------------------------------------------------


def np_keep(boxes, scores, thr, labels=None, max_detections=None):
    if labels is None:
        return np_nms.nms(np.asarray(boxes, dtype=np.float64), np.asarray(scores, dtype=np.float64), thr).tolist()
    return np_nms.batched_nms(
        np.asarray(boxes, dtype=np.float64),
        np.asarray(scores, dtype=np.float64),
        np.asarray(labels),
        thr,
        max_detections,
    ).tolist()


def torch_keep(boxes, scores, thr, labels=None, max_detections=None):
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    s = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    if labels is None:
        return torch_nms.nms(b, s, thr).tolist()
    labels_tensor = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    return torch_nms.batched_nms(b, s, labels_tensor, thr, max_detections).tolist()


def both_keep(boxes, scores, thr, labels=None, max_detections=None):
    """Keep list of the numpy version, after asserting the torch version gives the same."""
    expected = np_keep(boxes, scores, thr, labels, max_detections)
    assert torch_keep(boxes, scores, thr, labels, max_detections) == expected
    return expected


def reference_iou(a, b):
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(boxes, scores, thr, labels=None, max_detections=None):
    """Textbook greedy NMS in plain Python: visit by descending score (ties: lower index first)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # sorted() is stable
    keep = []
    for i in order:
        if max_detections is not None and len(keep) >= max_detections:
            break
        suppressed = False
        for k in keep:
            if labels is not None and labels[k] != labels[i]:
                continue
            if reference_iou(boxes[k], boxes[i]) > thr:
                suppressed = True
                break
        if not suppressed:
            keep.append(i)
    return keep


# --- hand-made cases -----------------------------------------------------------------------------------------


def test_overlap_above_and_below_threshold():
    boxes = [[0, 0, 10, 10], [1, 1, 11, 11]]  # IoU = 81 / 119 = 0.68
    scores = [0.9, 0.8]
    assert both_keep(boxes, scores, 0.5) == [0]
    assert both_keep(boxes, scores, 0.7) == [0, 1]
    assert both_keep(boxes, [0.8, 0.9], 0.5) == [1]


def test_iou_exactly_at_threshold_keeps_both():
    # IoU = 1 / 2 and 3 / 5 exactly (in float64); `>` means equality does not suppress.
    half = [[0, 0, 2, 1], [0, 0, 1, 1]]
    three_fifths = [[0, 0, 4, 1], [1, 0, 5, 1]]
    assert both_keep(half, [0.9, 0.8], 0.5) == [0, 1]
    assert both_keep(half, [0.9, 0.8], 0.4999) == [0]
    assert both_keep(three_fifths, [0.9, 0.8], 0.6) == [0, 1]
    assert both_keep(three_fifths, [0.9, 0.8], 0.5999) == [0]


def test_iou_at_threshold_with_float32_inputs():
    # A float32 IoU of 3/5 rounds above 0.6; the implementations compute IoU in float64 so this must still keep both.
    boxes = np.array([[0, 0, 4, 1], [1, 0, 5, 1]], dtype=np.float32)
    scores = np.array([0.9, 0.8], dtype=np.float32)
    assert np_nms.nms(boxes, scores, 0.6).tolist() == [0, 1]
    assert torch_nms.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.6).tolist() == [0, 1]


def test_equal_scores_prefer_lower_index():
    boxes = [[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10]]
    assert both_keep(boxes, [0.5, 0.5, 0.5], 0.5) == [0, 1]
    boxes = [[50, 50, 60, 60], [0, 0, 10, 10], [0, 0, 10, 10]]
    assert both_keep(boxes, [0.5, 0.5, 0.5], 0.5) == [0, 1]
    # A higher score still wins over a lower index.
    assert both_keep(boxes, [0.5, 0.5, 0.7], 0.5) == [2, 0]


def test_keep_is_sorted_by_descending_score():
    boxes = [[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21], [30, 30, 31, 31]]
    assert both_keep(boxes, [0.1, 0.9, 0.5, 0.7], 0.5) == [1, 3, 2, 0]


def test_greedy_chain_suppressed_box_does_not_suppress():
    # 0 overlaps 1 (IoU 0.6), 1 overlaps 2 (IoU 0.6), 0 and 2 overlap with IoU 1/3.
    boxes = [[0, 0, 8, 1], [2, 0, 10, 1], [4, 0, 12, 1]]
    assert reference_iou(boxes[0], boxes[1]) == 0.6
    assert reference_iou(boxes[0], boxes[2]) == pytest.approx(1 / 3)
    assert both_keep(boxes, [0.9, 0.8, 0.7], 0.5) == [0, 2]


def test_empty_input():
    for boxes in (np.zeros((0, 4)), np.zeros((0,))):
        keep = np_nms.nms(boxes, np.zeros((0,)), 0.5)
        assert keep.dtype == np.int64 and keep.shape == (0,)
        keep = np_nms.batched_nms(boxes, np.zeros((0,)), np.zeros((0,), dtype=np.int64), 0.5, 10)
        assert keep.shape == (0,)
    keep = torch_nms.nms(torch.zeros((0, 4)), torch.zeros((0,)), 0.5)
    assert keep.dtype == torch.int64 and keep.shape == (0,)
    keep = torch_nms.batched_nms(torch.zeros((0, 4)), torch.zeros((0,)), torch.zeros((0,), dtype=torch.int64), 0.5)
    assert keep.shape == (0,)


def test_one_box():
    assert both_keep([[1, 2, 3, 4]], [0.3], 0.5) == [0]
    assert both_keep([[1, 2, 3, 4]], [0.3], 0.5, labels=[7]) == [0]


def test_degenerate_boxes_never_suppress():
    # Two identical zero-area boxes: union 0, IoU defined as 0.
    assert both_keep([[5, 5, 5, 5], [5, 5, 5, 5]], [0.9, 0.8], 0.0) == [0, 1]
    # A proper box over a zero-area box inside it: IoU 0.
    assert both_keep([[0, 0, 10, 10], [5, 5, 5, 5]], [0.9, 0.8], 0.0) == [0, 1]


def test_class_wise_separation():
    boxes = [[0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 10, 10], [0, 1, 10, 10]]
    scores = [0.9, 0.8, 0.7, 0.6]
    # Identical boxes 0 and 1 in different classes survive together; 2 is suppressed by 0, 3 by 1.
    assert both_keep(boxes, scores, 0.5, labels=[0, 1, 0, 1]) == [0, 1]
    # All in one class: only the best.
    assert both_keep(boxes, scores, 0.5, labels=[3, 3, 3, 3]) == [0]
    # All different classes: nothing suppressed.
    assert both_keep(boxes, scores, 0.5, labels=[0, 1, 2, 3]) == [0, 1, 2, 3]
    # Class-agnostic NMS on the same input keeps only the best.
    assert both_keep(boxes, scores, 0.5) == [0]


def test_max_detections():
    boxes = [[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21], [0, 0, 1, 1]]
    scores = [0.1, 0.9, 0.5, 0.7]
    labels = [0, 0, 0, 0]
    assert both_keep(boxes, scores, 0.5, labels, max_detections=None) == [1, 3, 2]
    assert both_keep(boxes, scores, 0.5, labels, max_detections=2) == [1, 3]
    assert both_keep(boxes, scores, 0.5, labels, max_detections=0) == []
    with pytest.raises(ValueError):
        np_nms.batched_nms(np.zeros((1, 4)), [1.0], [0], 0.5, -1)
    with pytest.raises(ValueError):
        torch_nms.batched_nms(torch.zeros((1, 4)), torch.ones(1), torch.zeros(1), 0.5, -1)


def test_bad_shapes_and_nan_are_refused():
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        np_nms.nms(np.zeros((3, 5)), np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        np_nms.nms(np.zeros((3, 4)), np.zeros(2), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        np_nms.nms(np.zeros((1, 4)), [float("nan")], 0.5)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        torch_nms.nms(torch.zeros((3, 5)), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        torch_nms.nms(torch.zeros((3, 4)), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        torch_nms.nms(torch.zeros((1, 4)), torch.tensor([float("nan")]), 0.5)


# --- postprocess ---------------------------------------------------------------------------------------------


def _postprocess_both(boxes, scores, **kwargs):
    nb, ns, nl = np_nms.postprocess(np.asarray(boxes, dtype=np.float32), np.asarray(scores, dtype=np.float32), **kwargs)
    tb, ts, tl = torch_nms.postprocess(
        torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores, dtype=torch.float32), **kwargs
    )
    np.testing.assert_array_equal(tb.numpy(), nb)
    np.testing.assert_array_equal(ts.numpy(), ns)
    np.testing.assert_array_equal(tl.numpy(), nl)
    assert nb.dtype == np.float32 and ns.dtype == np.float32 and nl.dtype == np.int64
    assert nb.shape == (len(nl), 4) and ns.shape == (len(nl),)
    return nb.tolist(), ns.tolist(), nl.tolist()


def test_postprocess_hand_case():
    boxes = [[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]]
    scores = [
        [0.9, 0.05, 0.6],  # box 0: class 0 and class 2 pass 0.1
        [0.8, 0.7, 0.1],  # box 1: class 0 (suppressed by box 0 / class 0), class 1; 0.1 is not > 0.1
        [0.2, 0.0, 0.0],  # box 2: class 0
    ]
    kwargs = dict(score_threshold=0.1, iou_threshold=0.5, max_detections=100, pre_nms_topk=1000)
    b, s, labels = _postprocess_both(boxes, scores, **kwargs)
    assert labels == [0, 1, 2, 0]
    assert s == pytest.approx([0.9, 0.7, 0.6, 0.2])
    assert b == [[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]]

    # max_detections cuts after NMS.
    _, s, labels = _postprocess_both(boxes, scores, **dict(kwargs, max_detections=2))
    assert labels == [0, 1]
    # pre_nms_topk cuts before NMS: the 3 best pairs are (0,0) 0.9, (1,0) 0.8, (1,1) 0.7; (1,0) is then suppressed.
    _, s, labels = _postprocess_both(boxes, scores, **dict(kwargs, pre_nms_topk=3))
    assert labels == [0, 1]
    assert s == pytest.approx([0.9, 0.7])
    # No limits.
    _, _, labels = _postprocess_both(boxes, scores, **dict(kwargs, max_detections=None, pre_nms_topk=None))
    assert labels == [0, 1, 2, 0]


def test_postprocess_nothing_passes_and_empty():
    b, s, labels = _postprocess_both([[0, 0, 1, 1]], [[0.1, 0.2]], score_threshold=0.5, iou_threshold=0.5,
                                     max_detections=10, pre_nms_topk=10)
    assert (b, s, labels) == ([], [], [])
    nb, ns, nl = np_nms.postprocess(np.zeros((0, 4)), np.zeros((0, 3)), 0.5, 0.5, 10, 10)
    assert nb.shape == (0, 4) and ns.shape == (0,) and nl.shape == (0,)
    tb, ts, tl = torch_nms.postprocess(torch.zeros((0, 4)), torch.zeros((0, 3)), 0.5, 0.5, 10, 10)
    assert tb.shape == (0, 4) and ts.shape == (0,) and tl.shape == (0,)


# --- randomized agreement ------------------------------------------------------------------------------------


def _random_set(rng):
    """Clustered boxes (so that suppression happens) with quantised scores (so that ties happen)."""
    n = int(rng.integers(0, 60))
    centres = rng.uniform(0, 100, size=(max(1, n // 5), 2))
    centre = centres[rng.integers(0, len(centres), size=n)] + rng.normal(0, 3, size=(n, 2))
    size = rng.uniform(2, 30, size=(n, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    if rng.random() < 0.5:
        boxes = np.round(boxes)  # integer coordinates: duplicates and exact IoU values
    boxes = boxes.astype(np.float32 if rng.random() < 0.5 else np.float64)
    scores = np.round(rng.uniform(0, 1, size=n), 1).astype(boxes.dtype)
    labels = rng.integers(0, 4, size=n)
    thr = float(rng.choice([0.0, 0.3, 0.5, 0.6, 0.7, 0.9]))
    return boxes, scores, labels, thr


@pytest.mark.parametrize("block", [None, 1, 5])
def test_random_sets_agree_with_reference(block, monkeypatch):
    # Both versions resolve candidates in blocks; small blocks exercise the cross-block suppression path.
    if block is not None:
        monkeypatch.setattr(np_nms, "_BLOCK", block)
        monkeypatch.setattr(torch_nms, "_BLOCK", block)
    rng = np.random.default_rng(1234)
    total_kept = total = 0
    for _ in range(200):
        boxes, scores, labels, thr = _random_set(rng)
        ref_boxes = boxes.astype(np.float64).tolist()
        ref_scores = scores.astype(np.float64).tolist()
        tb, ts, tl = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels)

        expected = reference_nms(ref_boxes, ref_scores, thr)
        assert np_nms.nms(boxes, scores, thr).tolist() == expected
        assert torch_nms.nms(tb, ts, thr).tolist() == expected

        max_det = None if rng.random() < 0.5 else int(rng.integers(0, 10))
        expected = reference_nms(ref_boxes, ref_scores, thr, labels.tolist(), max_det)
        assert np_nms.batched_nms(boxes, scores, labels, thr, max_det).tolist() == expected
        assert torch_nms.batched_nms(tb, ts, tl, thr, max_det).tolist() == expected
        total_kept += len(reference_nms(ref_boxes, ref_scores, thr))
        total += len(boxes)
    # The sets must actually exercise suppression.
    assert 0 < total_kept < 0.8 * total


def test_random_postprocess_agree():
    rng = np.random.default_rng(99)
    for _ in range(50):
        boxes, _, _, thr = _random_set(rng)
        boxes = boxes.astype(np.float32)
        class_scores = np.round(rng.uniform(0, 1, size=(len(boxes), 3)), 2).astype(np.float32)
        kwargs = dict(score_threshold=0.3, iou_threshold=thr, max_detections=int(rng.integers(1, 20)),
                      pre_nms_topk=int(rng.integers(1, 100)))
        _postprocess_both(boxes.tolist(), class_scores.tolist(), **kwargs)
