"""From raw network outputs to detections in original image pixels, as the bundle manifest describes them.

Device module (runs on the Jetson Nano): Python 3.6 syntax, numpy only; never imports torch or onnx.

Steps (the same order as the host's `compress/inference.py`): take batch item 0 of the ``boxes`` (1, N, 4) and
``scores`` (1, N, C) outputs, run `runtime.nms.postprocess` (score threshold, pre-NMS top-k, class-wise NMS, max
detections) in network-input pixels, then map the kept boxes back to the original frame and clip them to it.

Manifest fields read (format v1): ``classes``, ``outputs.boxes.{name, format, units}``,
``outputs.scores.{name, activation}``, ``decoding.in_graph``, ``nms.{score_threshold, iou_threshold,
max_detections, pre_nms_topk, class_wise}``.
"""

import collections

import numpy as np

from runtime import nms
from runtime.preprocess import ManifestError, check_format_version, manifest_field, unletterbox_boxes

__all__ = ["Detections", "PostprocessConfig", "detections_from_outputs"]

# boxes (K, 4) float64 xyxy in original image pixels, scores (K,) float32, labels (K,) int64; by descending score.
Detections = collections.namedtuple("Detections", ["boxes", "scores", "labels"])


class PostprocessConfig(object):
    """Output names, class list and NMS settings."""

    def __init__(self, boxes_name, scores_name, classes, score_threshold, iou_threshold, max_detections,
                 pre_nms_topk):
        self.boxes_name = boxes_name
        self.scores_name = scores_name
        self.classes = list(classes)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.max_detections = None if max_detections is None else int(max_detections)
        self.pre_nms_topk = None if pre_nms_topk is None else int(pre_nms_topk)

    @classmethod
    def from_manifest(cls, manifest, score_threshold=None, iou_threshold=None, max_detections=None,
                      pre_nms_topk=None):
        """Settings from the manifest; a keyword that is not None overrides the manifest (e.g. 0.01 for AP)."""
        check_format_version(manifest)
        if not manifest_field(manifest, "decoding.in_graph"):
            raise NotImplementedError(
                "manifest.json says decoding.in_graph is false (raw head outputs), but this runtime only reads "
                "bundles whose graph already decodes boxes to input pixels and applies the score activation; "
                "re-export the bundle with in-graph decoding")
        box_format = manifest_field(manifest, "outputs.boxes.format")
        units = manifest_field(manifest, "outputs.boxes.units")
        if box_format != "xyxy" or units != "input_pixels":
            raise ManifestError("outputs.boxes must be format 'xyxy' in units 'input_pixels'; got {!r} in {!r}".format(
                box_format, units))
        activation = manifest_field(manifest, "outputs.scores.activation")
        if activation != "sigmoid":
            raise ManifestError("outputs.scores.activation must be 'sigmoid' (applied in the graph); got {!r}".format(
                activation))
        classes = manifest_field(manifest, "classes")
        if not manifest_field(manifest, "nms.class_wise") and len(classes) > 1:
            raise NotImplementedError("nms.class_wise is false with {} classes; only class-wise NMS is implemented "
                                      "(identical to class-agnostic NMS for one class)".format(len(classes)))

        def pick(value, field):
            return manifest_field(manifest, field) if value is None else value

        return cls(
            boxes_name=manifest_field(manifest, "outputs.boxes.name"),
            scores_name=manifest_field(manifest, "outputs.scores.name"),
            classes=classes,
            score_threshold=pick(score_threshold, "nms.score_threshold"),
            iou_threshold=pick(iou_threshold, "nms.iou_threshold"),
            max_detections=pick(max_detections, "nms.max_detections"),
            pre_nms_topk=pick(pre_nms_topk, "nms.pre_nms_topk"),
        )


def _single_image(outputs, name, last_dim, what):
    if name not in outputs:
        raise KeyError("the runner returned no output named '{}' (it returned {}); check outputs.{}.name in "
                       "manifest.json".format(name, sorted(outputs), what))
    array = np.asarray(outputs[name])
    if array.ndim != 3 or array.shape[0] != 1 or (last_dim is not None and array.shape[2] != last_dim):
        raise ValueError("output '{}' must have shape (1, N, {}); got {}".format(
            name, "C" if last_dim is None else last_dim, array.shape))
    return array[0]


def detections_from_outputs(outputs, config, meta):
    """Raw outputs of one image (dict name -> array) -> `Detections` in the original frame's pixels.

    Args:
        outputs: the runner's ``infer`` result.
        config: a `PostprocessConfig`.
        meta: the `runtime.preprocess.LetterboxMeta` of the frame.
    """
    boxes = _single_image(outputs, config.boxes_name, 4, "boxes")
    scores = _single_image(outputs, config.scores_name, len(config.classes), "scores")
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError("boxes has {} rows but scores has {}".format(boxes.shape[0], scores.shape[0]))
    kept_boxes, kept_scores, labels = nms.postprocess(
        boxes, scores, config.score_threshold, config.iou_threshold, config.max_detections, config.pre_nms_topk)
    return Detections(unletterbox_boxes(kept_boxes, meta), kept_scores, labels)
