"""Non-maximum suppression and detection post-processing for torch tensors (host side).

The torch twin of `runtime/nms.py` (the numpy version that runs on the Jetson): same functions, same
conventions, same keep indices (tested). Torch ops only — torchvision is deliberately not used (there is no CPU
build of it in this project's environment), and this module must not import onnx or anything device-side.

Conventions (identical to `runtime/nms.py`):

- Boxes are ``(N, 4)`` ``x1, y1, x2, y2`` in continuous coordinates, no ``+1``; expected well formed.
- IoU is computed in float64, so thresholds compare against exact doubles.
- Suppression when IoU ``> iou_threshold`` (strict, as torchvision); IoU equal to the threshold keeps both.
- Two boxes with zero union have IoU 0.
- Candidates are visited in descending score, ties in ascending index; keep indices are returned in that order.
- NaN scores are refused with ``ValueError`` (numpy and torch would sort them differently).
- ``postprocess`` keeps (box, class) pairs with ``score > score_threshold``.

The greedy pass is the blocked one of `runtime/nms.py`: the next block of alive candidates (in score order) gets its
small "would suppress" matrix, a Python walk over it decides which of them are kept, and those kept boxes then
suppress every later candidate in one vectorised step. Exact greedy NMS with a few torch calls per block, memory
O(block × N); fine for thousands of boxes.
"""

from typing import Optional, Tuple

import torch

__all__ = ["nms", "batched_nms", "postprocess"]

# Candidates resolved together per greedy step (see the module docstring).
_BLOCK = 64


def _check_boxes(boxes: torch.Tensor) -> torch.Tensor:
    if boxes.numel() == 0:
        return boxes.reshape(0, 4)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) as x1, y1, x2, y2; got {tuple(boxes.shape)}")
    return boxes


def _check_vector(values: torch.Tensor, n: int, name: str) -> torch.Tensor:
    values = values.reshape(-1)
    if values.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match boxes; got {tuple(values.shape)}")
    if values.is_floating_point() and bool(torch.isnan(values).any()):
        # NOTE: numpy and torch order NaN differently when sorting; refuse rather than disagree.
        raise ValueError(f"{name} contains NaN; check the model outputs before NMS")
    return values


def _check_limit(value: Optional[int], name: str) -> None:
    if value is not None and int(value) < 0:
        raise ValueError(f"{name} must be None (no limit) or >= 0; got {value}")


def _suppression(kept: torch.Tensor, others: torch.Tensor, threshold: float, class_wise: bool) -> torch.Tensor:
    """(k, m) bool: True where candidate column i of ``kept`` suppresses column j of ``others``.

    Both are stacked (7, ·) float64 candidates (see `_greedy_keep`). The IoU is computed with the same operations
    in the same order as `runtime/nms.py`, so both give bit-identical IoUs.
    """
    width = torch.minimum(kept[2][:, None], others[2]) - torch.maximum(kept[0][:, None], others[0])
    height = torch.minimum(kept[3][:, None], others[3]) - torch.maximum(kept[1][:, None], others[1])
    width.clamp_(min=0.0)
    height.clamp_(min=0.0)
    inter = width * height
    # NOTE: 0/0 for two degenerate boxes gives nan, and nan > threshold is False (IoU treated as 0).
    iou = inter / (kept[4][:, None] + others[4] - inter)
    suppressed = iou > threshold
    if class_wise:
        suppressed &= kept[5][:, None] == others[5]
    return suppressed


def _greedy_keep(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: Optional[torch.Tensor],
    iou_threshold: float,
    max_detections: Optional[int],
) -> torch.Tensor:
    n = boxes.shape[0]
    limit = n if max_detections is None else int(max_detections)
    if n == 0 or limit == 0:
        return torch.zeros((0,), dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores.to(torch.float64), descending=True, stable=True).indices
    sorted_boxes = boxes.to(torch.float64)[order]
    x1, y1, x2, y2 = sorted_boxes.unbind(dim=1)
    # Rows: x1, y1, x2, y2, area, label, position in the sorted order (labels and positions are exact in float64).
    alive = torch.stack(
        [
            x1,
            y1,
            x2,
            y2,
            (x2 - x1) * (y2 - y1),
            labels[order].to(torch.float64) if labels is not None else torch.zeros_like(x1),
            torch.arange(n, dtype=torch.float64, device=boxes.device),
        ]
    )
    class_wise = labels is not None
    threshold = float(iou_threshold)

    keep = []  # positions in the sorted order
    while alive.shape[1] > 0:
        block = alive[:, :_BLOCK]
        rest = alive[:, _BLOCK:]
        within = _suppression(block, block, threshold, class_wise).tolist()
        removed = [False] * block.shape[1]
        kept_columns = []
        for column, row in enumerate(within):
            if removed[column]:
                continue
            kept_columns.append(column)
            if len(keep) + len(kept_columns) >= limit:
                break
            # Only later columns matter; marking earlier (already decided) ones is harmless.
            removed = [done or hit for done, hit in zip(removed, row)]
        kept = block[:, kept_columns]
        keep.extend(int(position) for position in kept[6].tolist())
        if len(keep) >= limit or rest.shape[1] == 0:
            break
        alive = rest[:, ~_suppression(kept, rest, threshold, class_wise).any(dim=0)]
    return order[torch.tensor(keep, dtype=torch.int64, device=boxes.device)]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy class-agnostic NMS.

    Args:
        boxes: (N, 4) x1, y1, x2, y2.
        scores: (N,).
        iou_threshold: a box is dropped when its IoU with a kept box is ``> iou_threshold``.

    Returns:
        int64 tensor of kept indices into ``boxes``, sorted by descending score (ties: ascending index).
    """
    boxes = _check_boxes(boxes)
    scores = _check_vector(scores, boxes.shape[0], "scores")
    return _greedy_keep(boxes, scores, None, iou_threshold, None)


def batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    iou_threshold: float,
    max_detections: Optional[int] = None,
) -> torch.Tensor:
    """Class-wise NMS: boxes with different ``labels`` never suppress each other.

    One greedy pass with a same-label mask: exactly the result of per-class ``nms`` merged by score.

    Args:
        boxes: (N, 4) x1, y1, x2, y2.
        scores: (N,).
        labels: (N,) integer class ids.
        iou_threshold: suppression when IoU ``> iou_threshold`` within one class.
        max_detections: keep at most this many (the highest-scoring); None for no limit.

    Returns:
        int64 tensor of kept indices, sorted by descending score (ties: ascending index).
    """
    _check_limit(max_detections, "max_detections")
    boxes = _check_boxes(boxes)
    n = boxes.shape[0]
    scores = _check_vector(scores, n, "scores")
    labels = _check_vector(labels, n, "labels").to(torch.int64)
    return _greedy_keep(boxes, scores, labels, iou_threshold, max_detections)


def postprocess(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    score_threshold: float,
    iou_threshold: float,
    max_detections: Optional[int],
    pre_nms_topk: Optional[int],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn one image's decoded boxes and per-class scores into final detections.

    Steps: keep every (box, class) pair with ``score > score_threshold``; keep the ``pre_nms_topk`` best pairs
    (ties: box index, then class, ascending); class-wise NMS; keep at most ``max_detections``.

    Args:
        boxes: (N, 4) x1, y1, x2, y2.
        scores: (N, C) per-class scores (after sigmoid/softmax).
        score_threshold: pairs with score ``<=`` this are dropped.
        iou_threshold: class-wise NMS threshold (suppression when IoU ``>`` it).
        max_detections: at most this many detections; None for no limit.
        pre_nms_topk: at most this many pairs enter NMS; None for no limit.

    Returns:
        (boxes (K, 4), scores (K,), labels (K,) int64), sorted by descending score; boxes and scores keep the
        input dtypes.
    """
    _check_limit(max_detections, "max_detections")
    _check_limit(pre_nms_topk, "pre_nms_topk")
    boxes = _check_boxes(boxes)
    if scores.dim() != 2 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"scores must have shape (N, C) with N = {boxes.shape[0]} boxes; got {tuple(scores.shape)}"
        )

    box_index, labels = torch.nonzero(scores > score_threshold, as_tuple=True)
    pair_scores = scores[box_index, labels]
    if pre_nms_topk is not None and pair_scores.shape[0] > int(pre_nms_topk):
        top = torch.sort(pair_scores.to(torch.float64), descending=True, stable=True).indices[: int(pre_nms_topk)]
        box_index = box_index[top]
        labels = labels[top]
        pair_scores = pair_scores[top]

    keep = batched_nms(boxes[box_index], pair_scores, labels, iou_threshold, max_detections)
    kept = box_index[keep]
    return boxes[kept], pair_scores[keep], labels[keep]
