"""PASCAL VOC detection evaluation: per-class average precision at an IoU threshold (AP50 by default) and mAP.

What it is for: scoring the detector before and after pruning with the numbers the official VOC devkit
(``VOCevaldet.m`` + ``VOCap.m``) would report, so that baseline and pruned APs are comparable with each other and
with published VOC figures. Both interpolations are provided: the VOC2007 11-point one and the all-point one of
VOC2010+.

Pure numpy, Python 3.6 syntax: it must not import torch, onnx or anything device-side, so that the host (training,
benchmarks) and the device side (accuracy of a bundle) can score detections with the same code.

Conventions (all match the devkit; each is tested against a loop-by-loop port of it):

- Boxes are ``(x1, y1, x2, y2)`` in continuous pixel coordinates. The data layer converts VOC's 1-based inclusive
  integer pixels ``xmin..xmax`` to ``x1 = xmin - 1, x2 = xmax``, so widths, intersections and areas here use no
  ``+1``. On the original integer coordinates this is exactly the devkit's ``+1`` convention:
  ``xmax - xmin + 1 == x2 - x1`` and ``min(xmax) - max(xmin) + 1 == min(x2) - max(x1)``, so every area,
  intersection and IoU is the same number (bit for bit on integer boxes).
- Per class, detections of all images are ranked by descending score with a stable sort: ties keep input order
  (the iteration order of the ``detections`` mapping, then the order inside each image), like MATLAB's ``sort``.
- Each detection looks for the ground-truth object of the same class and image with the largest IoU, among ALL of
  them (already matched ones included; on equal IoU the first one wins). If that IoU is ``>= iou_threshold``
  (the devkit's ``ovmax >= minoverlap``; py-faster-rcnn's ``voc_eval.py`` uses ``>``, which differs only at an IoU
  of exactly the threshold): a difficult object makes the detection ignored (neither TP nor FP), an object not yet
  matched makes it a TP (and marks the object), an object already matched makes it an FP (duplicate). Below the
  threshold, or with no object of the class in the image, it is an FP.
- Difficult objects do not count in ``npos`` (the number of positives that recall is divided by).
- Ignored detections are dropped from the ranked list before precision/recall are computed. In the devkit they
  contribute a repeated (recall, precision) point, which changes neither interpolation; the one difference is a
  class whose every detection is ignored, where the VOC07 devkit returns NaN (``max`` of ``0/0``) and we return 0.
- A class with ``npos == 0`` (absent from the ground truth, or only difficult) has AP ``nan`` and is left out of
  mAP; mAP is ``nan`` when no class has positives.

Results are plain dicts of ``str``, ``int`` and ``float`` (``nan`` included), ready for ``json.dump``.
"""

import math
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "GroundTruth",
    "Detections",
    "METRIC_VOC07",
    "METRIC_ALL_POINT",
    "voc_ap",
    "evaluate_detections",
    "evaluate_all",
    "evaluate_size_ranges",
    "source_of",
]

METRIC_VOC07 = "voc07_11point"
METRIC_ALL_POINT = "all_point"


class GroundTruth(NamedTuple):
    """Annotated objects of one image (continuous pixel coordinates, see the module docstring)."""

    boxes: np.ndarray  # (N, 4) float, x1, y1, x2, y2
    labels: np.ndarray  # (N,) int, index into class_names
    difficult: np.ndarray  # (N,) bool


class Detections(NamedTuple):
    """Detector output for one image (continuous pixel coordinates, see the module docstring)."""

    boxes: np.ndarray  # (M, 4) float, x1, y1, x2, y2
    scores: np.ndarray  # (M,) float, higher is more confident
    labels: np.ndarray  # (M,) int, index into class_names


class _ClassMatches(NamedTuple):
    """Outcome of matching one class: TP flags of the ranked, non-ignored detections."""

    true_positive: np.ndarray  # (K,) bool, descending score; False means FP
    npos: int
    num_detections: int  # all detections of the class, ignored ones included


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """Average precision from a ranked list's cumulative recall and precision (same length, finite).

    ``use_07_metric=True``: VOC2007 11-point interpolation, the mean over ``t = 0, 0.1, ..., 1.0`` of the largest
    precision at recall ``>= t`` (0 where recall never reaches ``t``). ``False``: all-point interpolation (VOC2010+
    ``VOCap.m``), the area under the precision envelope, summed over the steps of recall.
    """
    recall = np.asarray(recall, dtype=np.float64).ravel()
    precision = np.asarray(precision, dtype=np.float64).ravel()
    if recall.shape != precision.shape:
        raise ValueError(f"recall and precision differ in length: {recall.size} != {precision.size}")
    if not (np.all(np.isfinite(recall)) and np.all(np.isfinite(precision))):
        raise ValueError("recall and precision must be finite")
    if use_07_metric:
        total = 0.0
        for k in range(11):
            # NOTE: t = k / 10 is the correctly rounded double, so a recall of exactly 3/10 reaches t = 0.3.
            # np.arange(0, 1.1, 0.1) (py-faster-rcnn) yields 0.30000000000000004 and would miss it.
            reached = precision[recall >= k / 10.0]
            total += float(reached.max()) if reached.size else 0.0
        return total / 11.0
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # envelope: best precision at any larger recall
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def evaluate_detections(
    detections: Mapping[str, Detections],
    ground_truths: Mapping[str, GroundTruth],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> Dict[str, Any]:
    """Per-class AP and mAP of ``detections`` against ``ground_truths`` (both keyed by image id).

    Every image to be scored must be in ``ground_truths`` (with empty arrays if it has no objects); an image
    missing from ``detections`` has no detections; a detection for an image id not in ``ground_truths`` raises
    ``ValueError``. Matching and interpolation follow the devkit (see the module docstring).

    Returns ``{"ap": {class: float}, "map": float, "npos": {class: int}, "num_detections": {class: int},
    "recall": {class: float}, "metric": "voc07_11point" | "all_point", "iou_threshold": float}``;
    ``num_detections`` counts all detections of the class, ignored ones included; ``recall`` is the share of the
    positives found by any detection given (TP / npos at the lowest score); a class with ``npos == 0`` has AP and
    recall ``nan`` and is left out of ``map``.
    """
    matches = _match_all(detections, ground_truths, class_names, iou_threshold)
    return _summarise(matches, class_names, iou_threshold, use_07_metric)


def evaluate_all(
    detections: Mapping[str, Detections],
    ground_truths: Mapping[str, GroundTruth],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
) -> Dict[str, Any]:
    """Both interpolations of :func:`evaluate_detections`, overall and per data source.

    Returns ``{"voc07_11point": ..., "all_point": ..., "per_source": {source: {"voc07_11point": ...,
    "all_point": ..., "num_images": int}}}``. The source of an image is given by :func:`source_of`; ``per_source``
    is filled only when every ground-truth image id has a source and there are at least two distinct ones, and
    is ``{}`` otherwise. Each source is scored on its own images only (its own npos and ranking).
    """
    matches = _match_all(detections, ground_truths, class_names, iou_threshold)
    result: Dict[str, Any] = {
        METRIC_VOC07: _summarise(matches, class_names, iou_threshold, True),
        METRIC_ALL_POINT: _summarise(matches, class_names, iou_threshold, False),
        "per_source": {},
    }
    sources = {image_id: source_of(image_id) for image_id in ground_truths}
    distinct = set(sources.values())
    if None in distinct or len(distinct) < 2:
        return result
    for source in sorted(s for s in distinct if s is not None):
        source_gts = {i: gt for i, gt in ground_truths.items() if sources[i] == source}
        # Every detection id is in ground_truths (checked by _match_all above).
        source_dets = {i: det for i, det in detections.items() if sources[i] == source}
        source_matches = _match_all(source_dets, source_gts, class_names, iou_threshold)
        result["per_source"][source] = {
            METRIC_VOC07: _summarise(source_matches, class_names, iou_threshold, True),
            METRIC_ALL_POINT: _summarise(source_matches, class_names, iou_threshold, False),
            "num_images": len(source_gts),
        }
    return result


def evaluate_size_ranges(
    detections: Mapping[str, Detections],
    ground_truths: Mapping[str, GroundTruth],
    class_names: Sequence[str],
    sizes: Mapping[str, np.ndarray],
    ranges: Sequence[Tuple[float, float]],
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> List[Dict[str, Any]]:
    """:func:`evaluate_detections` once per object-size range ``[lo, hi)``, as COCO scores its area ranges: an
    object whose size (``sizes[image_id][k]`` for object ``k``, any measure: height, sqrt(area)...) lies outside
    the range is treated as difficult, so it neither counts as a positive nor makes a detection on it a false
    positive. One result per range, in order."""
    results = []
    for lo, hi in ranges:
        restricted = {}
        for image_id, gt in ground_truths.items():
            size = np.asarray(sizes[image_id], dtype=np.float64).reshape(-1)
            if size.shape[0] != np.asarray(gt.labels).reshape(-1).shape[0]:
                raise ValueError(f"image {image_id!r}: {size.shape[0]} sizes for "
                                 f"{np.asarray(gt.labels).reshape(-1).shape[0]} objects")
            outside = (size < lo) | (size >= hi)
            restricted[image_id] = GroundTruth(gt.boxes, gt.labels, np.asarray(gt.difficult, dtype=bool) | outside)
        results.append(evaluate_detections(detections, restricted, class_names, iou_threshold, use_07_metric))
    return results


def source_of(image_id: str) -> Optional[str]:
    """The data source an image id is prefixed with: the text before its first ``"_"``, or None.

    ``"mot15_TUD-Campus_000001"`` -> ``"mot15"``, ``"coco_000000000139"`` -> ``"coco"``, ``"000005"`` (plain VOC)
    -> None; an id starting with ``"_"`` has no source either.
    """
    prefix, separator, _ = image_id.partition("_")
    if not separator or not prefix:
        return None
    return prefix


def _summarise(
    matches: List[_ClassMatches], class_names: Sequence[str], iou_threshold: float, use_07_metric: bool
) -> Dict[str, Any]:
    ap: Dict[str, float] = {}
    for name, match in zip(class_names, matches):
        ap[name] = _average_precision(match.true_positive, match.npos, use_07_metric)
    scored = [value for value in ap.values() if not math.isnan(value)]
    return {
        "ap": ap,
        "map": float(sum(scored) / len(scored)) if scored else math.nan,
        "npos": {name: int(match.npos) for name, match in zip(class_names, matches)},
        "num_detections": {name: int(match.num_detections) for name, match in zip(class_names, matches)},
        "recall": {name: float(match.true_positive.sum()) / match.npos if match.npos else math.nan
                   for name, match in zip(class_names, matches)},
        "metric": METRIC_VOC07 if use_07_metric else METRIC_ALL_POINT,
        "iou_threshold": float(iou_threshold),
    }


def _average_precision(true_positive: np.ndarray, npos: int, use_07_metric: bool) -> float:
    if npos == 0:
        return math.nan
    tp = np.cumsum(true_positive, dtype=np.float64)
    fp = np.cumsum(~true_positive, dtype=np.float64)
    # tp + fp >= 1 everywhere: ignored detections were removed, so no 0/0 as in the devkit.
    return voc_ap(tp / npos, tp / (tp + fp), use_07_metric)


def _match_all(
    detections: Mapping[str, Detections],
    ground_truths: Mapping[str, GroundTruth],
    class_names: Sequence[str],
    iou_threshold: float,
) -> List[_ClassMatches]:
    """Validate the inputs and match every class; one entry per class, in ``class_names`` order."""
    num_classes = _check_class_names(class_names)
    iou_threshold = float(iou_threshold)
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")

    # Ground-truth objects of all images, numbered globally so one integer names an (image, object) pair.
    gt_by_image: Dict[str, Tuple[int, np.ndarray, np.ndarray]] = {}
    gt_labels: List[np.ndarray] = []
    gt_difficult: List[np.ndarray] = []
    offset = 0
    for image_id, gt in ground_truths.items():
        boxes, labels, difficult = _checked_ground_truth(image_id, gt, num_classes)
        gt_by_image[image_id] = (offset, boxes, labels)
        gt_labels.append(labels)
        gt_difficult.append(difficult)
        offset += labels.size
    all_gt_labels = np.concatenate(gt_labels) if gt_labels else np.zeros(0, dtype=np.int64)
    all_gt_difficult = np.concatenate(gt_difficult) if gt_difficult else np.zeros(0, dtype=bool)

    # Best same-class object of every detection. Which object is best does not depend on what was matched
    # before (the devkit searches all objects), so it is computed per image, before ranking.
    det_scores: List[np.ndarray] = []
    det_labels: List[np.ndarray] = []
    det_best_gt: List[np.ndarray] = []
    det_best_iou: List[np.ndarray] = []
    for image_id, det in detections.items():
        if image_id not in gt_by_image:
            raise ValueError(
                f"detections for image {image_id!r}, which is not in ground_truths: every scored image needs a "
                "ground-truth entry (empty arrays if it has no objects)"
            )
        boxes, scores, labels = _checked_detections(image_id, det, num_classes)
        image_offset, image_gt_boxes, image_gt_labels = gt_by_image[image_id]
        if image_gt_labels.size:
            iou = pairwise_iou(boxes, image_gt_boxes)
            iou[labels[:, None] != image_gt_labels[None, :]] = -1.0  # other classes never match
            best = np.argmax(iou, axis=1)  # first of equal IoUs, as the devkit's strict '>' scan
            best_iou = iou[np.arange(labels.size), best]
        else:
            best = np.zeros(labels.size, dtype=np.int64)
            best_iou = np.full(labels.size, -1.0)
        det_scores.append(scores)
        det_labels.append(labels)
        det_best_gt.append(best + image_offset)
        det_best_iou.append(best_iou)
    all_scores = np.concatenate(det_scores) if det_scores else np.zeros(0)
    all_labels = np.concatenate(det_labels) if det_labels else np.zeros(0, dtype=np.int64)
    all_best_gt = np.concatenate(det_best_gt) if det_best_gt else np.zeros(0, dtype=np.int64)
    all_best_iou = np.concatenate(det_best_iou) if det_best_iou else np.zeros(0)

    npos = np.bincount(all_gt_labels[~all_gt_difficult], minlength=num_classes)
    matches: List[_ClassMatches] = []
    for class_index in range(num_classes):
        selected = np.flatnonzero(all_labels == class_index)
        ranked = selected[np.argsort(-all_scores[selected], kind="stable")]
        best_gt = all_best_gt[ranked]
        hit = all_best_iou[ranked] >= iou_threshold
        ignored = np.zeros(ranked.size, dtype=bool)
        ignored[hit] = all_gt_difficult[best_gt[hit]]
        candidates = np.flatnonzero(hit & ~ignored)
        # The first (highest ranked) candidate of each object is its TP; later ones are duplicates (FP).
        _, first = np.unique(best_gt[candidates], return_index=True)
        true_positive = np.zeros(ranked.size, dtype=bool)
        true_positive[candidates[first]] = True
        matches.append(_ClassMatches(true_positive[~ignored], int(npos[class_index]), int(ranked.size)))
    return matches


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Areas of ``(n, 4)`` boxes in continuous coordinates (no +1)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def pairwise_intersection(boxes_a: np.ndarray, boxes_b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Intersection areas ``(len(a), len(b))`` in continuous coordinates, and where the boxes overlap at all (the
    devkit's ``iw > 0 & ih > 0``; the area is 0 elsewhere)."""
    width = np.minimum(boxes_a[:, None, 2], boxes_b[None, :, 2]) - np.maximum(boxes_a[:, None, 0], boxes_b[None, :, 0])
    height = np.minimum(boxes_a[:, None, 3], boxes_b[None, :, 3]) - np.maximum(boxes_a[:, None, 1], boxes_b[None, :, 1])
    overlap = (width > 0) & (height > 0)
    return np.where(overlap, width * height, 0.0), overlap


def pairwise_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(len(a), len(b))`` in float64, continuous coordinates (no +1); 0 where boxes do not overlap."""
    intersection, overlap = pairwise_intersection(boxes_a, boxes_b)
    area_a, area_b = box_areas(boxes_a), box_areas(boxes_b)
    union = area_a[:, None] + area_b[None, :] - intersection
    iou = np.zeros(intersection.shape)
    np.divide(intersection, union, out=iou, where=overlap)  # union >= intersection > 0 where overlap
    return iou


def _check_class_names(class_names: Sequence[str]) -> int:
    names = list(class_names)
    if not names:
        raise ValueError("class_names is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names has duplicates: {names}")
    return len(names)


def _checked_boxes(image_id: str, what: str, boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"image {image_id!r}: {what} boxes must have shape (N, 4), got {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"image {image_id!r}: {what} boxes contain NaN or inf")
    return boxes


def _checked_labels(image_id: str, what: str, labels: np.ndarray, count: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size and labels.dtype.kind not in "iu":
        raise ValueError(f"image {image_id!r}: {what} labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64).ravel()
    if labels.size != count:
        raise ValueError(f"image {image_id!r}: {count} {what} boxes but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"image {image_id!r}: {what} labels must be in [0, {num_classes}) (class_names), "
            f"got {labels.min()}..{labels.max()}"
        )
    return labels


def _checked_ground_truth(image_id: str, gt: GroundTruth, num_classes: int) -> Tuple[np.ndarray, ...]:
    boxes = _checked_boxes(image_id, "ground-truth", gt.boxes)
    labels = _checked_labels(image_id, "ground-truth", gt.labels, len(boxes), num_classes)
    difficult = np.asarray(gt.difficult).astype(bool).ravel()
    if difficult.size != len(boxes):
        raise ValueError(f"image {image_id!r}: {len(boxes)} ground-truth boxes but {difficult.size} difficult flags")
    return boxes, labels, difficult


def _checked_detections(image_id: str, det: Detections, num_classes: int) -> Tuple[np.ndarray, ...]:
    boxes = _checked_boxes(image_id, "detection", det.boxes)
    scores = np.asarray(det.scores, dtype=np.float64).ravel()
    if scores.size != len(boxes):
        raise ValueError(f"image {image_id!r}: {len(boxes)} detection boxes but {scores.size} scores")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"image {image_id!r}: detection scores contain NaN or inf (they could not be ranked)")
    labels = _checked_labels(image_id, "detection", det.labels, len(boxes), num_classes)
    return boxes, scores, labels
