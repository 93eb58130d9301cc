"""Non-maximum suppression and detection post-processing in numpy (device side).

This module runs on the Jetson Nano: Python 3.6 syntax, numpy only. It must not import torch, torchvision or
onnx. `compress/nms.py` is the torch twin used on the host; both give the same keep indices (tested).

Conventions shared by both implementations:

- Boxes are ``(N, 4)`` ``x1, y1, x2, y2`` in continuous coordinates: area is ``(x2 - x1) * (y2 - y1)``, no ``+1``.
  Boxes are expected to be well formed (``x2 >= x1``, ``y2 >= y1``); this is not checked.
- IoU is computed in float64 whatever the input dtype, so a threshold such as 0.6 compares against the exact
  double ``0.6`` (a float32 IoU of 3/5 would be rounded *above* 0.6 and suppress).
- A box is suppressed when its IoU with a kept, higher-scoring box is strictly greater than ``iou_threshold``
  (``>``, as torchvision does): IoU exactly equal to the threshold keeps both boxes.
- Two boxes whose union is zero (both degenerate) have IoU 0.
- Candidates are visited in descending score; equal scores are visited in ascending index (stable sort). The
  returned keep indices are in that order.
- NaN scores are refused with ``ValueError`` (numpy and torch would sort them differently).
- ``postprocess`` keeps (box, class) pairs whose score is strictly greater than ``score_threshold``.
"""

import numpy as np

__all__ = ["nms", "batched_nms", "postprocess", "descending_order"]


def _as_boxes(boxes):
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError("boxes must have shape (N, 4) as x1, y1, x2, y2; got {}".format(boxes.shape))
    return boxes


def _as_vector(values, n, name, dtype):
    values = np.asarray(values, dtype=dtype).reshape(-1)
    if values.shape[0] != n:
        raise ValueError("{} must have shape ({},) to match boxes; got {}".format(name, n, values.shape))
    if values.dtype.kind == "f" and np.isnan(values).any():
        # NOTE: numpy and torch order NaN differently when sorting; refuse rather than disagree.
        raise ValueError("{} contains NaN; check the model outputs before NMS".format(name))
    return values


def _check_limit(value, name):
    if value is not None and int(value) < 0:
        raise ValueError("{} must be None (no limit) or >= 0; got {}".format(name, value))


# Candidates resolved together: each block of the score-sorted candidates is first filtered by every box kept so far
# (one vectorised step), then resolved by a greedy walk over a small precomputed matrix. Exact greedy NMS, with a
# handful of numpy calls per block instead of per kept box, and work that stops as soon as ``max_detections`` boxes
# are kept: later candidates are never compared with anything (with 1000 candidates and 100 detections kept from
# the first blocks, that is most of them).
_BLOCK = 64


def descending_order(scores):
    """Indices that sort ``scores`` descending, ties in ascending index (a stable sort of the negated scores).

    ``kind="mergesort"``, not ``"stable"``: JetPack 4.6 installs numpy 1.13.3, which knows ``"stable"`` only from
    numpy 1.15 on; every numpy sorts stably under ``"mergesort"`` (newer ones with the same algorithm as
    ``"stable"``). tests/test_device_runtime_floor.py runs this under numpy 1.13.3.
    """
    return np.argsort(-np.asarray(scores), kind="mergesort")


def _stack_candidates(boxes, scores, labels):
    """Sort by descending score (stable) and stack as (7, n) float64: x1, y1, x2, y2, area, label, position."""
    order = descending_order(scores)
    sorted_boxes = boxes[order]
    x1 = sorted_boxes[:, 0]
    y1 = sorted_boxes[:, 1]
    x2 = sorted_boxes[:, 2]
    y2 = sorted_boxes[:, 3]
    stacked = np.empty((7, boxes.shape[0]), dtype=np.float64)
    stacked[0] = x1
    stacked[1] = y1
    stacked[2] = x2
    stacked[3] = y2
    stacked[4] = (x2 - x1) * (y2 - y1)
    stacked[5] = labels[order] if labels is not None else 0.0
    stacked[6] = np.arange(boxes.shape[0])  # position in the sorted order; exact in float64
    return order, stacked


def _suppression(kept, others, threshold, class_wise):
    """(k, m) bool: True where candidate column i of ``kept`` suppresses column j of ``others``.

    IoU = inter / (area_kept + area_other - inter), with inter = max(0, min(x2) - max(x1)) * max(0, ...): the same
    operations in the same order as `compress/nms.py`, so both give bit-identical IoUs. 2-D broadcasting only
    (a (4, k, m) version is several times slower in numpy).
    """
    width = np.minimum(kept[2][:, None], others[2]) - np.maximum(kept[0][:, None], others[0])
    height = np.minimum(kept[3][:, None], others[3]) - np.maximum(kept[1][:, None], others[1])
    np.maximum(width, 0.0, out=width)
    np.maximum(height, 0.0, out=height)
    inter = width * height
    # 0/0 (two degenerate boxes) gives nan, and nan > threshold is False: such boxes never suppress.
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (kept[4][:, None] + others[4] - inter)
    suppressed = iou > threshold
    if class_wise:
        suppressed &= kept[5][:, None] == others[5]
    return suppressed


def _greedy_keep(boxes, scores, labels, iou_threshold, max_detections):
    """Greedy NMS; boxes of different ``labels`` never suppress each other (``labels`` may be None)."""
    n = boxes.shape[0]
    limit = n if max_detections is None else int(max_detections)
    if n == 0 or limit == 0:
        return np.zeros((0,), dtype=np.int64)
    order, candidates = _stack_candidates(boxes, scores, labels)
    class_wise = labels is not None
    threshold = float(iou_threshold)

    keep = []  # positions in the sorted order
    kept_so_far = None  # (7, k) stacked rows of the kept boxes
    for start in range(0, n, _BLOCK):
        block = candidates[:, start:start + _BLOCK]
        if kept_so_far is not None:
            block = block[:, ~_suppression(kept_so_far, block, threshold, class_wise).any(axis=0)]
            if block.shape[1] == 0:
                continue
        within = _suppression(block, block, threshold, class_wise)
        removed = np.zeros(block.shape[1], dtype=bool)
        kept_columns = []
        for column in range(block.shape[1]):
            if removed[column]:
                continue
            kept_columns.append(column)
            if len(keep) + len(kept_columns) >= limit:
                break
            # Only later columns matter; marking earlier (already decided) ones is harmless.
            removed |= within[column]
        kept = block[:, kept_columns]
        keep.extend(kept[6].tolist())
        if len(keep) >= limit:
            break
        kept_so_far = kept if kept_so_far is None else np.concatenate([kept_so_far, kept], axis=1)
    return order[np.asarray(keep, dtype=np.int64)].astype(np.int64)


def nms(boxes, scores, iou_threshold):
    """Greedy class-agnostic NMS.

    Args:
        boxes: (N, 4) x1, y1, x2, y2.
        scores: (N,).
        iou_threshold: a box is dropped when its IoU with a kept box is ``> iou_threshold``.

    Returns:
        int64 array of kept indices into ``boxes``, sorted by descending score (ties: ascending index).
    """
    boxes = _as_boxes(boxes)
    scores = _as_vector(scores, boxes.shape[0], "scores", np.float64)
    return _greedy_keep(boxes, scores, None, iou_threshold, None)


def batched_nms(boxes, scores, labels, iou_threshold, max_detections=None):
    """Class-wise NMS: boxes with different ``labels`` never suppress each other.

    Implemented as one greedy pass over all boxes with a same-label mask, which gives exactly the result of
    running ``nms`` per class and merging by score, without the rounding of the coordinate-offset trick.

    Args:
        boxes: (N, 4) x1, y1, x2, y2.
        scores: (N,).
        labels: (N,) integer class ids.
        iou_threshold: suppression when IoU ``> iou_threshold`` within one class.
        max_detections: keep at most this many (the highest-scoring); None for no limit.

    Returns:
        int64 array of kept indices, sorted by descending score (ties: ascending index).
    """
    _check_limit(max_detections, "max_detections")
    boxes = _as_boxes(boxes)
    n = boxes.shape[0]
    scores = _as_vector(scores, n, "scores", np.float64)
    labels = _as_vector(labels, n, "labels", np.int64)
    return _greedy_keep(boxes, scores, labels, iou_threshold, max_detections)


def postprocess(boxes, scores, score_threshold, iou_threshold, max_detections, pre_nms_topk):
    """Turn one image's decoded boxes and per-class scores into final detections.

    Steps: keep every (box, class) pair with ``score > score_threshold``; keep the ``pre_nms_topk`` best pairs
    (ties: box index, then class, ascending); class-wise NMS; keep at most ``max_detections``.

    Args:
        boxes: (N, 4) x1, y1, x2, y2 (already decoded and in the wanted coordinate frame).
        scores: (N, C) per-class scores (probabilities, after sigmoid/softmax).
        score_threshold: pairs with score ``<=`` this are dropped.
        iou_threshold: class-wise NMS threshold (suppression when IoU ``>`` it).
        max_detections: at most this many detections; None for no limit.
        pre_nms_topk: at most this many pairs enter NMS; None for no limit.

    Returns:
        (boxes (K, 4) float32, scores (K,) float32, labels (K,) int64), sorted by descending score.
    """
    _check_limit(max_detections, "max_detections")
    _check_limit(pre_nms_topk, "pre_nms_topk")
    boxes_in = np.asarray(boxes)
    if boxes_in.size == 0:
        boxes_in = boxes_in.reshape(0, 4)
    if boxes_in.ndim != 2 or boxes_in.shape[1] != 4:
        raise ValueError("boxes must have shape (N, 4) as x1, y1, x2, y2; got {}".format(boxes_in.shape))
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != boxes_in.shape[0]:
        raise ValueError("scores must have shape (N, C) with N = {} boxes; got {}".format(
            boxes_in.shape[0], scores.shape))

    box_index, labels = np.nonzero(scores > score_threshold)
    pair_scores = scores[box_index, labels]
    if pre_nms_topk is not None and pair_scores.shape[0] > int(pre_nms_topk):
        top = descending_order(pair_scores.astype(np.float64))[:int(pre_nms_topk)]
        box_index = box_index[top]
        labels = labels[top]
        pair_scores = pair_scores[top]

    keep = batched_nms(boxes_in[box_index], pair_scores, labels, iou_threshold, max_detections)
    kept = box_index[keep]
    return (boxes_in[kept].astype(np.float32),
            pair_scores[keep].astype(np.float32),
            labels[keep].astype(np.int64))
