"""A compact device-side VOC reader and AP50 evaluator (the device may not import the host's compress/).

`read_voc_split` reads ``ImageSets/Main/<split>.txt`` and the XML annotations of a VOC-layout folder;
`evaluate_detections` / `evaluate_all` score detections with the VOC07 11-point or all-point interpolation. Both
follow the host's ``compress/voc.py`` and ``compress/voc_eval.py`` exactly (tests/test_jetson_voc_eval.py checks
them against each other on random detections to 1e-9):

- boxes are continuous ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax`` (VOC's 1-based inclusive pixels),
  clipped to the image and stored as float32, like the host's data layer;
- detections of a class are ranked by descending score, ties in input order (stable sort);
- each detection takes the same-class object with the largest IoU among all of them (first one on ties); IoU
  ``>= iou_threshold``: difficult -> ignored, first match -> TP, already matched -> FP; else FP;
- difficult objects do not count as positives; a class without positives has AP nan and is left out of mAP.

Device module: Python 3.6 syntax; numpy and the standard library (xml.etree) only; never imports torch or onnx.
"""

import collections
import math
import os
import xml.etree.ElementTree as ET

import numpy as np

from runtime.nms import descending_order

__all__ = [
    "VOCError", "GroundTruth", "Detections", "ImageRecord", "find_year_dir", "read_split_ids", "read_annotation",
    "read_voc_split", "voc_ap", "evaluate_detections", "evaluate_all", "source_of",
]

METRIC_VOC07 = "voc07_11point"
METRIC_ALL_POINT = "all_point"

GroundTruth = collections.namedtuple("GroundTruth", ["boxes", "labels", "difficult"])
Detections = collections.namedtuple("Detections", ["boxes", "scores", "labels"])
# image_id, path of the image file, width, height (from the annotation)
ImageRecord = collections.namedtuple("ImageRecord", ["image_id", "path", "width", "height"])


class VOCError(ValueError):
    """A VOC folder or file that cannot be read; the message names the file."""


def find_year_dir(root, year=None):
    """The ``VOC20xx`` folder below ``root`` (the year folder itself, a VOCdevkit, or a folder holding VOCdevkit)."""
    root = str(root)
    if not os.path.isdir(root):
        raise VOCError("{}: VOC folder not found".format(root))
    if os.path.isdir(os.path.join(root, "Annotations")):
        return root
    if os.path.isdir(os.path.join(root, "VOCdevkit")):
        root = os.path.join(root, "VOCdevkit")
    if year is not None:
        name = year if str(year).startswith("VOC") else "VOC{}".format(year)
        candidate = os.path.join(root, name)
        if not os.path.isdir(os.path.join(candidate, "Annotations")):
            raise VOCError("{}: no Annotations/ folder".format(candidate))
        return candidate
    years = sorted(name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name, "Annotations")))
    if not years:
        raise VOCError("{}: no VOC year folder with Annotations/ (expected e.g. VOCdevkit/VOC2007)".format(root))
    if len(years) > 1 and "VOC2007" in years:
        return os.path.join(root, "VOC2007")
    if len(years) > 1:
        raise VOCError("{}: several VOC year folders {}; pass the one to use".format(root, years))
    return os.path.join(root, years[0])


def read_split_ids(year_dir, split):
    """Image ids of ``ImageSets/Main/<split>.txt`` (plain ids, or VOC's ``id 1/-1/0`` class-list form)."""
    path = os.path.join(year_dir, "ImageSets", "Main", "{}.txt".format(split))
    if not os.path.isfile(path):
        raise VOCError("{}: split file for split '{}' not found".format(path, split))
    ids = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) > 2 or (len(parts) == 2 and parts[1] not in ("1", "-1", "0")):
                raise VOCError("{}: line {}: expected 'id' or 'id 1/-1/0', got {!r}".format(path, number,
                                                                                          line.strip()))
            if len(parts) == 2 and parts[1] == "-1":
                continue
            ids.append(parts[0])
    if not ids:
        raise VOCError("{}: split '{}' is empty".format(path, split))
    return ids


def _text(node, tag, path, default=None):
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if default is not None:
            return default
        raise VOCError("{}: missing <{}>".format(path, tag))
    return child.text.strip()


def _number(node, tag, path):
    raw = _text(node, tag, path)
    try:
        return float(raw)
    except ValueError:
        raise VOCError("{}: <{}> is not a number: {!r}".format(path, tag, raw))


def read_annotation(xml_path, classes):
    """(width, height, GroundTruth) of one XML file; objects of classes not in ``classes`` are dropped."""
    if not os.path.isfile(xml_path):
        raise VOCError("{}: annotation file missing".format(xml_path))
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise VOCError("{}: malformed XML ({})".format(xml_path, exc))
    size = root.find("size")
    if size is None:
        raise VOCError("{}: missing <size>".format(xml_path))
    width, height = int(_number(size, "width", xml_path)), int(_number(size, "height", xml_path))
    index = dict((name, i) for i, name in enumerate(classes))
    boxes, labels, difficult = [], [], []
    for obj in root.findall("object"):
        name = _text(obj, "name", xml_path)
        if name not in index:
            continue
        box = obj.find("bndbox")
        if box is None:
            raise VOCError("{}: object {} has no <bndbox>".format(xml_path, name))
        x1 = _number(box, "xmin", xml_path) - 1.0
        y1 = _number(box, "ymin", xml_path) - 1.0
        x2 = _number(box, "xmax", xml_path)
        y2 = _number(box, "ymax", xml_path)
        if not (x2 > x1 and y2 > y1):
            raise VOCError("{}: object {} has an empty box".format(xml_path, name))
        boxes.append([max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))])
        labels.append(index[name])
        difficult.append(_text(obj, "difficult", xml_path, default="0") == "1")
    # float32 like the host's data layer, then float64 for evaluation: the same numbers on both sides.
    gt = GroundTruth(np.asarray(boxes, dtype=np.float32).reshape(-1, 4).astype(np.float64),
                     np.asarray(labels, dtype=np.int64), np.asarray(difficult, dtype=bool))
    return width, height, gt


def _image_path(year_dir, image_id):
    for ext in (".jpg", ".jpeg", ".png", ".JPG"):
        path = os.path.join(year_dir, "JPEGImages", image_id + ext)
        if os.path.isfile(path):
            return path
    raise VOCError("{}: image file missing".format(os.path.join(year_dir, "JPEGImages", image_id + ".jpg")))


def read_voc_split(root, split="test", classes=("person",), year=None):
    """([ImageRecord], {image_id: GroundTruth}) of one split of a VOC-layout folder."""
    year_dir = find_year_dir(root, year)
    records = []
    ground_truths = collections.OrderedDict()
    for image_id in read_split_ids(year_dir, split):
        width, height, gt = read_annotation(os.path.join(year_dir, "Annotations", image_id + ".xml"), classes)
        records.append(ImageRecord(image_id, _image_path(year_dir, image_id), width, height))
        ground_truths[image_id] = gt
    return records, ground_truths


# ------------------------------------------------------------------------------------------------- evaluation

def voc_ap(recall, precision, use_07_metric=True):
    """AP from cumulative recall/precision: VOC07 11-point (t = k / 10) or all-point (area under the envelope)."""
    recall = np.asarray(recall, dtype=np.float64).ravel()
    precision = np.asarray(precision, dtype=np.float64).ravel()
    if use_07_metric:
        total = 0.0
        for k in range(11):
            reached = precision[recall >= k / 10.0]  # k / 10.0, not arange(0, 1.1, 0.1): 0.3 must be exact
            total += float(reached.max()) if reached.size else 0.0
        return total / 11.0
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _iou(boxes_a, boxes_b):
    """IoU matrix in float64 (continuous coordinates; the same operations in the same order as the host)."""
    width = np.minimum(boxes_a[:, None, 2], boxes_b[None, :, 2]) - np.maximum(boxes_a[:, None, 0], boxes_b[None, :, 0])
    height = np.minimum(boxes_a[:, None, 3], boxes_b[None, :, 3]) - np.maximum(boxes_a[:, None, 1], boxes_b[None, :, 1])
    overlap = (width > 0) & (height > 0)
    intersection = np.where(overlap, width * height, 0.0)
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    union = area_a[:, None] + area_b[None, :] - intersection
    iou = np.zeros(intersection.shape)
    np.divide(intersection, union, out=iou, where=overlap)
    return iou


def _as_boxes(boxes):
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _class_outcomes(detections, ground_truths, class_index, iou_threshold):
    """(TP flags of the ranked, non-ignored detections, npos, number of detections) of one class."""
    npos = 0
    for gt in ground_truths.values():
        labels = np.asarray(gt.labels).reshape(-1)
        npos += int(np.sum((labels == class_index) & ~np.asarray(gt.difficult, dtype=bool).reshape(-1)))
    scores, best_iou, best_key, hard = [], [], [], []
    for image_id, det in detections.items():
        if image_id not in ground_truths:
            raise ValueError("detections for image {!r}, which has no ground truth".format(image_id))
        labels = np.asarray(det.labels).reshape(-1)
        mine = labels == class_index
        if not mine.any():
            continue
        boxes = _as_boxes(det.boxes)[mine]
        gt = ground_truths[image_id]
        gt_labels = np.asarray(gt.labels).reshape(-1)
        gt_index = np.flatnonzero(gt_labels == class_index)
        scores.append(np.asarray(det.scores, dtype=np.float64).reshape(-1)[mine])
        if gt_index.size:
            iou = _iou(boxes, _as_boxes(gt.boxes)[gt_index])
            best = np.argmax(iou, axis=1)
            best_iou.append(iou[np.arange(boxes.shape[0]), best])
            best_key.extend((image_id, int(gt_index[b])) for b in best)
            hard.append(np.asarray(gt.difficult, dtype=bool).reshape(-1)[gt_index[best]])
        else:
            best_iou.append(np.full(boxes.shape[0], -1.0))
            best_key.extend((image_id, -1) for _ in range(boxes.shape[0]))
            hard.append(np.zeros(boxes.shape[0], dtype=bool))
    if not scores:
        return np.zeros(0, dtype=bool), npos, 0
    scores = np.concatenate(scores)
    best_iou = np.concatenate(best_iou)
    hard = np.concatenate(hard)
    order = descending_order(scores)
    matched = set()
    flags = []
    for index in order:
        if best_iou[index] >= iou_threshold:
            if hard[index]:
                continue  # ignored: neither TP nor FP
            key = best_key[index]
            flags.append(key not in matched)
            matched.add(key)
        else:
            flags.append(False)
    return np.asarray(flags, dtype=bool), npos, int(scores.size)


def evaluate_detections(detections, ground_truths, class_names, iou_threshold=0.5, use_07_metric=True):
    """{"ap": {class: AP}, "map", "npos", "num_detections", "metric", "iou_threshold"} (as the host's)."""
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ValueError("iou_threshold must be in (0, 1], got {}".format(iou_threshold))
    ap = collections.OrderedDict()
    npos_by_class = collections.OrderedDict()
    count_by_class = collections.OrderedDict()
    for class_index, name in enumerate(class_names):
        flags, npos, count = _class_outcomes(detections, ground_truths, class_index, float(iou_threshold))
        npos_by_class[name] = npos
        count_by_class[name] = count
        if npos == 0:
            ap[name] = float("nan")
            continue
        tp = np.cumsum(flags, dtype=np.float64)
        fp = np.cumsum(~flags, dtype=np.float64)
        ap[name] = voc_ap(tp / npos, tp / np.maximum(tp + fp, 1e-300), use_07_metric)
    scored = [value for value in ap.values() if not math.isnan(value)]
    return collections.OrderedDict([
        ("ap", ap), ("map", float(sum(scored) / len(scored)) if scored else float("nan")),
        ("npos", npos_by_class), ("num_detections", count_by_class),
        ("metric", METRIC_VOC07 if use_07_metric else METRIC_ALL_POINT), ("iou_threshold", float(iou_threshold)),
    ])


def source_of(image_id):
    """``"mot15_TUD-Campus_000001"`` -> ``"mot15"``; None without a ``prefix_``."""
    prefix, separator, _ = image_id.partition("_")
    return prefix if separator and prefix else None


def evaluate_all(detections, ground_truths, class_names, iou_threshold=0.5):
    """Both interpolations, overall and per data source (when every id has one and there are at least two)."""
    result = collections.OrderedDict([
        (METRIC_VOC07, evaluate_detections(detections, ground_truths, class_names, iou_threshold, True)),
        (METRIC_ALL_POINT, evaluate_detections(detections, ground_truths, class_names, iou_threshold, False)),
        ("per_source", collections.OrderedDict()),
    ])
    sources = dict((image_id, source_of(image_id)) for image_id in ground_truths)
    distinct = set(sources.values())
    if None in distinct or len(distinct) < 2:
        return result
    for source in sorted(distinct):
        gts = collections.OrderedDict((i, g) for i, g in ground_truths.items() if sources[i] == source)
        dets = collections.OrderedDict((i, d) for i, d in detections.items() if sources.get(i) == source)
        result["per_source"][source] = collections.OrderedDict([
            (METRIC_VOC07, evaluate_detections(dets, gts, class_names, iou_threshold, True)),
            (METRIC_ALL_POINT, evaluate_detections(dets, gts, class_names, iou_threshold, False)),
            ("num_images", len(gts)),
        ])
    return result
