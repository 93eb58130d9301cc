"""Training targets and loss of the anchor-free detector.

Assignment (FCOS with centre sampling): a grid point is positive for a ground-truth box when it lies inside the
box and within ``radius * stride`` of the box centre, and the box's largest point-to-edge distance falls in the
level's scale range; a point claimed by several boxes takes the smallest. Loss: quality focal loss on the class
scores with the IoU of the predicted box as the soft target (so the score also ranks localisation quality, no
separate centre-ness branch), plus GIoU loss on the positives.

``assigner="simota"`` replaces the fixed rule by a dynamic one (SimOTA, as in YOLOX and NanoDet-Plus): every box
picks its positives among the points inside it or near its centre, on any level, by the cost of the current
prediction there (quality focal loss against the IoU, plus ``3 * -log IoU``, plus a large penalty for a point that is
not both inside the box and near its centre); a box takes as many points as the sum of its ten best IoUs (at least
one), and a point two boxes want goes to the cheaper.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from compress.detector import Detector, grid_points

INF = 1e8


def scale_ranges(strides: Sequence[int]) -> List[Tuple[float, float]]:
    # Level k handles objects whose largest centre-to-edge distance is in [lo, hi): 8 -> [0, 64), 16 -> [64, 128).
    bounds = [0.0] + [8.0 * s for s in strides[:-1]] + [INF]
    return [(bounds[i], bounds[i + 1]) for i in range(len(strides))]


def box_iou_aligned(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> Tuple[torch.Tensor, torch.Tensor]:
    """IoU and GIoU of matching rows of two (N, 4) box tensors."""
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    union = area_a + area_b - inter + eps
    iou = inter / union
    enc = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0).prod(1) + eps
    giou = iou - (enc - union) / enc
    return iou, giou


def _point_box_geometry(centres: torch.Tensor, strides: torch.Tensor, gt_boxes: torch.Tensor, radius: float):
    """Per point and box, the rule both assigners share: distances to the box's edges ``ltrb`` (N, M, 4), whether
    the point is inside the box, and whether it is within ``radius * stride`` of the box centre (N, M); also the
    squared distance of every point to every box centre (N, M)."""
    x, y = centres[:, 0:1], centres[:, 1:2]
    ltrb = torch.stack([x - gt_boxes[None, :, 0], y - gt_boxes[None, :, 1],
                        gt_boxes[None, :, 2] - x, gt_boxes[None, :, 3] - y], -1)
    inside = ltrb.min(-1).values > 0
    cx = (gt_boxes[:, 0] + gt_boxes[:, 2]) / 2
    cy = (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2
    rad = strides[:, None] * radius
    in_centre = ((x - cx[None]).abs() < rad) & ((y - cy[None]).abs() < rad)
    return ltrb, inside, in_centre, (x - cx[None]) ** 2 + (y - cy[None]) ** 2


@torch.no_grad()
def assign(
    centres: torch.Tensor, strides: torch.Tensor, level_of_point: torch.Tensor, gt_boxes: torch.Tensor,
    ranges: List[Tuple[float, float]], radius: float = 2.5,
) -> torch.Tensor:
    """Index of the assigned ground-truth box for every point, -1 for background."""
    n, m = centres.shape[0], gt_boxes.shape[0]
    if m == 0:
        return torch.full((n,), -1, dtype=torch.long, device=centres.device)
    ltrb, inside, in_centre, centre_d2 = _point_box_geometry(centres, strides, gt_boxes, radius)
    max_d = ltrb.max(-1).values
    lo = torch.tensor([r_[0] for r_ in ranges], device=centres.device)[level_of_point][:, None]
    hi = torch.tensor([r_[1] for r_ in ranges], device=centres.device)[level_of_point][:, None]
    in_range = (max_d >= lo) & (max_d < hi)
    ok = inside & in_centre & in_range
    # A box that no grid point falls into (small, or between points) still gets one positive: the point of its
    # scale level nearest to its centre (the finest level when none matches).
    orphan = ~ok.any(0)
    if orphan.any():
        level_ok = in_range.any(0)
        fallback = torch.where(level_ok[None], in_range, (level_of_point == 0)[:, None].expand(n, m))
        d2 = torch.where(fallback, centre_d2, torch.full_like(centre_d2, INF))
        nearest = d2.argmin(0)
        cols = torch.nonzero(orphan).squeeze(1)
        ok[nearest[cols], cols] = True
    area = ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]))[None].expand(n, m).clone()
    area[~ok] = INF
    best_area, best = area.min(1)
    best[best_area >= INF] = -1
    return best


ASSIGNERS = ("fcos", "simota")


@torch.no_grad()
def dynamic_assign(
    centres: torch.Tensor, strides: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
    pred_boxes: torch.Tensor, logits: torch.Tensor, radius: float = 2.5, candidate_k: int = 10,
    iou_weight: float = 3.0,
) -> torch.Tensor:
    """SimOTA: index of the assigned ground-truth box for every point, -1 for background.

    ``pred_boxes`` (N, 4) and ``logits`` (N, C) are the current predictions at the N points.
    """
    n, m = centres.shape[0], gt_boxes.shape[0]
    result = torch.full((n,), -1, dtype=torch.long, device=centres.device)
    if m == 0:
        return result
    _, inside, in_centre, _ = _point_box_geometry(centres, strides, gt_boxes, radius)
    candidate = inside | in_centre
    cand = torch.nonzero(candidate.any(1)).squeeze(1)
    if cand.numel() == 0:
        return result
    kk = cand.numel()
    iou = box_iou_aligned(pred_boxes[cand].float()[:, None].expand(kk, m, 4).reshape(-1, 4),
                          gt_boxes[None].expand(kk, m, 4).reshape(-1, 4))[0].view(kk, m)  # (K, M)
    cls_logit = logits[cand].float()[:, gt_labels]  # (K, M): each point's logit of each box's class
    quality = F.binary_cross_entropy_with_logits(cls_logit, iou, reduction="none")
    quality = quality * (iou - cls_logit.sigmoid()).pow(2)
    cost = quality + iou_weight * -torch.log(iou + 1e-7)
    cost = cost + 1e5 * (~(inside[cand] & in_centre[cand])).float()
    cost = torch.where(candidate[cand], cost, torch.full_like(cost, INF))
    dynamic_k = torch.topk(iou, min(candidate_k, kk), dim=0).values.sum(0).int().clamp(min=1)  # (M,)
    order = torch.argsort(cost, dim=0)  # (K, M): cheapest first
    rank = torch.empty_like(order)
    rank.scatter_(0, order, torch.arange(kk, device=order.device)[:, None].expand_as(order))
    chosen = (rank < dynamic_k[None]) & candidate[cand]
    # A point chosen by several boxes goes to the one it costs least.
    cost = torch.where(chosen, cost, torch.full_like(cost, 2 * INF))
    best_cost, best = cost.min(1)
    keep = best_cost < 2 * INF
    result[cand[keep]] = best[keep]
    return result


class DetectionLoss:
    def __init__(self, model: Detector, box_weight: float = 2.0, radius: float = 2.5, qfl_beta: float = 2.0,
                 assigner: str = "fcos") -> None:
        if assigner not in ASSIGNERS:
            raise ValueError(f"unknown assigner {assigner!r}; choose from {ASSIGNERS}")
        self.assigner = assigner
        self.num_classes = model.config.num_classes
        self.strides = model.strides
        self.ranges = scale_ranges(self.strides)
        self.box_weight = box_weight
        self.radius = radius
        self.beta = qfl_beta
        self._cache: Dict[Tuple, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _points(self, sizes: List[Tuple[int, int]], device: torch.device):
        key = (tuple(sizes), str(device))
        if key not in self._cache:
            centres, strides = grid_points(sizes, self.strides, device=device)
            levels = torch.cat([torch.full((h * w,), k, dtype=torch.long, device=device)
                                for k, (h, w) in enumerate(sizes)])
            self._cache[key] = (centres, strides, levels)
        return self._cache[key]

    def __call__(self, model: Detector, outs: List[torch.Tensor], targets: List[Dict[str, torch.Tensor]]):
        logits, log_dist, sizes = model.flatten(outs)
        centres, strides, levels = self._points(sizes, logits.device)
        bsz, n, c = logits.shape
        dist = torch.exp(log_dist.clamp(max=model.MAX_LOG_DISTANCE)) * strides[None, :, None]
        pred_boxes = torch.cat([centres[None] - dist[..., :2], centres[None] + dist[..., 2:]], -1)

        score_target = torch.zeros_like(logits)
        pos_pred, pos_gt = [], []
        pos_index = []
        for i, tgt in enumerate(targets):
            if self.assigner == "simota":
                gt_idx = dynamic_assign(centres, strides, tgt["boxes"], tgt["labels"], pred_boxes[i].detach(),
                                        logits[i].detach(), self.radius)
            else:
                gt_idx = assign(centres, strides, levels, tgt["boxes"], self.ranges, self.radius)
            pos = torch.nonzero(gt_idx >= 0).squeeze(1)
            if pos.numel() == 0:
                continue
            pos_pred.append(pred_boxes[i, pos])
            pos_gt.append(tgt["boxes"][gt_idx[pos]])
            pos_index.append((i, pos, tgt["labels"][gt_idx[pos]]))
        num_pos = max(sum(p.numel() for _, p, _ in pos_index), 1)
        if pos_pred:
            pp, pg = torch.cat(pos_pred), torch.cat(pos_gt)
            iou, giou = box_iou_aligned(pp, pg)
            start = 0
            for i, pos, labels in pos_index:
                k = pos.numel()
                score_target[i, pos, labels] = iou[start:start + k].detach().clamp(min=0.0).to(score_target.dtype)
                start += k
            # Weight box loss by the target quality so ambiguous points matter less (GFL-style).
            weight = iou.detach().clamp(min=0.1)
            box_loss = ((1 - giou) * weight).sum() / weight.sum().clamp(min=1e-6)
        else:
            box_loss = pred_boxes.sum() * 0.0
        # Quality focal loss: BCE against the soft IoU target, modulated by |target - sigmoid|^beta.
        prob = logits.sigmoid()
        bce = F.binary_cross_entropy_with_logits(logits, score_target, reduction="none")
        qfl = (bce * (prob - score_target).abs().pow(self.beta)).sum() / num_pos
        total = qfl + self.box_weight * box_loss
        return total, {"cls": float(qfl.detach()), "box": float(box_loss.detach()), "pos": float(num_pos) / bsz}
