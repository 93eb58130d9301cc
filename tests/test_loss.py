"""Target assignment (FCOS with centre sampling; SimOTA) and the detection loss, against hand-computed cases."""
from __future__ import annotations

import math

import pytest
import torch

from compress.detector import Detector, DetectorConfig, grid_points
from compress.loss import INF, DetectionLoss, assign, box_iou_aligned, dynamic_assign, scale_ranges


pytestmark = pytest.mark.usefixtures("one_thread")


def _points(input_size: int, strides=(8, 16, 32)):
    sizes = [(input_size // s, input_size // s) for s in strides]
    centres, point_strides = grid_points(sizes, strides)
    levels = torch.cat([torch.full((h * w,), k, dtype=torch.long) for k, (h, w) in enumerate(sizes)])
    return centres, point_strides, levels


def test_scale_ranges():
    assert scale_ranges((8, 16, 32)) == [(0.0, 64.0), (64.0, 128.0), (128.0, 1e8)]
    assert INF == 1e8
    assert scale_ranges((8,)) == [(0.0, 1e8)]


def test_assign_single_small_box_hand_computed():
    # 64 x 64 input: level 8 is an 8x8 grid with centres 4, 12, ..., 60.
    centres, strides, levels = _points(64)
    gt = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    idx = assign(centres, strides, levels, gt, scale_ranges((8, 16, 32)))
    assert idx.shape == (64 + 16 + 4,) and idx.dtype == torch.long
    # Centre (20, 20), radius 2.5 * 8 = 20: |c - 20| < 20 and inside (0, 40) -> c in {4, 12, 20, 28, 36},
    # i.e. grid columns/rows 0..4. Largest distance to an edge <= 36 < 64: level 8 only.
    expected = sorted(y * 8 + x for y in range(5) for x in range(5))
    assert torch.nonzero(idx >= 0).squeeze(1).tolist() == expected
    assert set(idx[idx >= 0].tolist()) == {0}


def test_assign_splits_a_box_between_levels_by_scale_range():
    # 128 x 128 input: level 8 is 16x16 (centres 4..124), level 16 is 8x8 (8..120), level 32 is 4x4.
    centres, strides, levels = _points(128)
    gt = torch.tensor([[0.0, 0.0, 96.0, 96.0]])  # centre (48, 48)
    idx = assign(centres, strides, levels, gt, scale_ranges((8, 16, 32)))
    pos = torch.nonzero(idx >= 0).squeeze(1).tolist()
    # Level 8: radius 20 -> centres {36, 44, 52, 60} (cols/rows 4..7); max edge distance <= 60 < 64: all kept.
    level8 = [y * 16 + x for y in range(4, 8) for x in range(4, 8)]
    # Level 16: radius 40 -> centres {24, 40, 56, 72} (cols/rows 1..4); a point needs max(l, t, r, b) >= 64,
    # i.e. a coordinate of 24 or 72: all but the inner 2x2 (40/56 x 40/56).
    level16 = [256 + y * 8 + x for y in range(1, 5) for x in range(1, 5) if not (x in (2, 3) and y in (2, 3))]
    assert pos == level8 + level16
    assert len(level8) == 16 and len(level16) == 12
    # Level 32 needs a distance >= 128: nothing in a 96-pixel box.
    assert (idx[256 + 64:] == -1).all()


def test_assign_point_in_two_boxes_takes_the_smaller():
    centres, strides, levels = _points(64)
    gt = torch.tensor([[0.0, 0.0, 40.0, 40.0],  # area 1600, centre (20, 20)
                       [16.0, 16.0, 48.0, 48.0]])  # area 1024, centre (32, 32)
    idx = assign(centres, strides, levels, gt, scale_ranges((8, 16, 32)))

    def at(x: float, y: float) -> int:
        i = int(((centres[:64, 0] == x) & (centres[:64, 1] == y)).nonzero())
        return int(idx[i])

    assert at(20, 20) == 1  # inside both, within both centre radii -> the smaller box
    assert at(36, 36) == 1
    assert at(4, 4) == 0  # only inside box 0
    assert at(12, 36) == 0  # x=12 is outside box 1
    assert at(44, 44) == 1  # outside box 0 (x2 = 40)
    assert at(52, 52) == -1  # outside both
    counts = torch.bincount(idx[idx >= 0], minlength=2).tolist()
    # Box 1: centres {20, 28, 36, 44} in each axis (|c - 32| < 20 and 16 < c < 48) -> 16 points, all its own.
    # Box 0: its 25 points minus the 9 shared ones (c in {20, 28, 36}) -> 16.
    assert counts == [16, 16]


def test_assign_no_boxes():
    centres, strides, levels = _points(64)
    idx = assign(centres, strides, levels, torch.zeros((0, 4)), scale_ranges((8, 16, 32)))
    assert idx.shape == (84,) and idx.dtype == torch.long
    assert (idx == -1).all()


def test_box_iou_aligned_hand_cases():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 4.0, 2.0], [2.0, 0.0, 3.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    iou, giou = box_iou_aligned(a, b)
    # Overlap 1, union 7, enclosing 3x3 = 9; identical; disjoint (enclosing 3x1, union 2); nested (1 in 4).
    assert iou.tolist() == pytest.approx([1 / 7, 1.0, 0.0, 0.25], abs=1e-6)
    assert giou.tolist() == pytest.approx([1 / 7 - 2 / 9, 1.0, -1 / 3, 0.25], abs=1e-6)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return Detector(DetectorConfig(num_classes=1, width_mult=0.35, input_size=64))


def test_detection_loss_finite_positive_with_known_positive_count(tiny_model):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 40.0, 40.0]]), "labels": torch.tensor([0])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.long)}]
    loss_fn = DetectionLoss(tiny_model)
    assert loss_fn.ranges == [(0.0, 64.0), (64.0, 128.0), (128.0, 1e8)]
    tiny_model.train()
    outs = tiny_model(images)
    loss, parts = loss_fn(tiny_model, outs, targets)
    assert loss.dim() == 0 and math.isfinite(float(loss.detach())) and float(loss.detach()) > 0
    assert parts["pos"] == 25 / 2  # the 25 level-8 points of the hand-computed case, over a batch of 2
    assert parts["cls"] > 0 and 0 < parts["box"] <= 2.0  # GIoU loss lies in [0, 2]
    assert float(loss.detach()) == pytest.approx(parts["cls"] + 2.0 * parts["box"], rel=1e-5)

    tiny_model.zero_grad(set_to_none=True)
    loss.backward()
    for head in tiny_model.heads:
        assert head.pred.weight.grad is not None
        assert float(head.pred.weight.grad.abs().sum()) > 0
        assert torch.isfinite(head.pred.weight.grad).all()
    # Box gradient reaches the distance channels of the level that holds the positives.
    assert float(tiny_model.heads[0].pred.bias.grad[1:].abs().sum()) > 0


def test_detection_loss_all_negative_batch(tiny_model):
    torch.manual_seed(2)
    images = torch.randn(2, 3, 64, 64)
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.long)}
    loss_fn = DetectionLoss(tiny_model)
    tiny_model.train()
    outs = tiny_model(images)
    loss, parts = loss_fn(tiny_model, outs, [empty, empty])
    assert math.isfinite(float(loss.detach())) and float(loss.detach()) > 0
    assert parts["box"] == 0.0 and parts["pos"] == 0.5  # num_pos is floored at 1
    tiny_model.zero_grad(set_to_none=True)
    loss.backward()
    grad = tiny_model.heads[0].pred.bias.grad
    assert float(grad[0].abs()) > 0  # the class logit is pushed down
    assert float(grad[1:].abs().sum()) == 0.0  # no positives, no box gradient


def test_detection_loss_hand_computed():
    """Zero pred weights make every output its bias: the whole loss can be computed by hand."""
    model = Detector(DetectorConfig(num_classes=1, width_mult=0.35, input_size=64))
    with torch.no_grad():
        for head in model.heads:
            head.pred.weight.zero_()
            head.pred.bias.copy_(torch.tensor([0.0] + [math.log(2.0)] * 4))  # logit 0; distances 2 * stride
    model.eval()
    outs = model.raw_outputs(torch.randn(1, 3, 64, 64))
    # A 32-px box centred on the level-8 point (28, 28), which decodes to exactly [12, 12, 44, 44].
    gt = torch.tensor([[12.0, 12.0, 44.0, 44.0]])
    loss, parts = DetectionLoss(model)(model, outs, [{"boxes": gt, "labels": torch.tensor([0])}])
    # Positives: level-8 centres strictly inside (12, 44) and within 20 of 28 -> {20, 28, 36}^2, 9 points. Each
    # predicts the gt box shifted by (dx, dy) in {-8, 0, 8}^2.
    assert parts["pos"] == 9.0
    ious, gious = [], []
    for dx in (-8, 0, 8):
        for dy in (-8, 0, 8):
            inter = (32 - abs(dx)) * (32 - abs(dy))
            union = 2 * 32 * 32 - inter
            enclosing = (32 + abs(dx)) * (32 + abs(dy))
            ious.append(inter / union)
            gious.append(inter / union - (enclosing - union) / enclosing)
    weights = [max(i, 0.1) for i in ious]
    box = sum((1 - g) * w for g, w in zip(gious, weights)) / sum(weights)
    # Logit 0: BCE is ln 2 whatever the target; the QFL factor is (0.5 - target)^2; 84 - 9 negatives.
    cls = math.log(2.0) * (75 * 0.25 + sum((0.5 - i) ** 2 for i in ious)) / 9
    assert parts["box"] == pytest.approx(box, rel=1e-5)
    assert parts["cls"] == pytest.approx(cls, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(cls + 2.0 * box, rel=1e-5)


# SimOTA on a 64 x 64 input: level 8 is an 8x8 grid (centres 4..60, index y * 8 + x), level 16 a 4x4 grid (centres
# 8, 24, 40, 56; index 64 + y * 4 + x), level 32 a 2x2 grid (index 80 + y * 2 + x).
FAR_BOX = [50.0, 50.0, 60.0, 60.0]  # IoU 0 with every box below (they end at 40)


def _predictions(perfect):
    """Every point predicts FAR_BOX with logit 0, except the points of ``perfect`` (index -> box)."""
    centres, strides, _ = _points(64)
    pred = torch.tensor([FAR_BOX]).repeat(centres.shape[0], 1)
    for i, box in perfect.items():
        pred[i] = torch.tensor(box)
    return centres, strides, pred, torch.zeros(centres.shape[0], 1)


def test_dynamic_assign_takes_as_many_points_as_the_summed_ious():
    box = [0.0, 0.0, 40.0, 40.0]  # centre (20, 20)
    # Three candidates predict the box exactly (level-8 points (12, 12) and (20, 20), level-16 point (24, 24)), and
    # so does level-8 point (60, 60), which is neither inside the box nor within 2.5 strides (20) of its centre.
    centres, strides, pred, logits = _predictions({9: box, 18: box, 69: box, 63: box})
    idx = dynamic_assign(centres, strides, torch.tensor([box]), torch.tensor([0]), pred, logits)
    assert idx.shape == (84,) and idx.dtype == torch.long
    # Ten best candidate IoUs sum to 3 (point 63 is no candidate): k = 3, the three exact points (cost
    # ln 2 * 0.25 against ln 2 * 0.25 + 3 * -ln(1e-7) = 48.5 elsewhere), on two levels.
    assert torch.nonzero(idx >= 0).squeeze(1).tolist() == [9, 18, 69]
    assert set(idx[idx >= 0].tolist()) == {0}


def test_dynamic_assign_prefers_points_inside_and_near_the_centre():
    box = [0.0, 0.0, 40.0, 40.0]
    # Level-16 point (40, 40) is within 2.5 strides (40) of the centre but not inside the box: a candidate, penalised.
    centres, strides, pred, logits = _predictions({18: box, 74: box})
    idx = dynamic_assign(centres, strides, torch.tensor([box]), torch.tensor([0]), pred, logits)
    pos = torch.nonzero(idx >= 0).squeeze(1).tolist()
    # k = 2: the exact point inside, then one of the IoU-0 points that are inside and near the centre (48.5) before
    # the exact point outside (0.17 + 1e5).
    assert len(pos) == 2 and 18 in pos and 74 not in pos
    x, y = centres[pos[1] if pos[0] == 18 else pos[0]].tolist()
    assert 0 < x < 40 and 0 < y < 40


def test_dynamic_assign_one_point_per_box_when_nothing_overlaps():
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [2.0, 10.0, 30.0, 38.0]])
    centres, strides, pred, logits = _predictions({})
    idx = dynamic_assign(centres, strides, boxes, torch.tensor([0, 0]), pred, logits)
    # Every IoU is 0: k is floored at 1, and each box gets one point inside it and near its centre.
    assert sorted(idx[idx >= 0].tolist()) == [0, 1]
    for j in (0, 1):
        (x, y), b = centres[idx == j][0].tolist(), boxes[j].tolist()
        assert b[0] < x < b[2] and b[1] < y < b[3]


def test_dynamic_assign_a_contested_point_goes_to_the_cheaper_box():
    a, b = [0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 40.0, 32.0]
    # Level-8 point (20, 20) predicts box a: IoU 1 with a, 1280 / 1600 = 0.8 with b; no other point overlaps either.
    centres, strides, pred, logits = _predictions({18: a})
    idx = dynamic_assign(centres, strides, torch.tensor([a, b]), torch.tensor([0, 0]), pred, logits)
    # k = 1 for both boxes and both want point 18: cost ln 2 * 0.25 = 0.17 for a, ln 2 * 0.09 + 3 * -ln 0.8 = 0.73
    # for b. It goes to a; b is left without a positive (SimOTA does not hand it another).
    assert idx[18] == 0
    assert torch.nonzero(idx >= 0).squeeze(1).tolist() == [18]


def test_dynamic_assign_no_boxes():
    centres, strides, pred, logits = _predictions({})
    idx = dynamic_assign(centres, strides, torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.long), pred, logits)
    assert (idx == -1).all() and idx.shape == (84,)


def test_detection_loss_with_simota(tiny_model):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 64)
    gt = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    targets = [{"boxes": gt, "labels": torch.tensor([0])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.long)}]
    loss_fn = DetectionLoss(tiny_model, assigner="simota")
    tiny_model.train()
    outs = tiny_model(images)
    loss, parts = loss_fn(tiny_model, outs, targets)
    # The positives are those of dynamic_assign on the same (detached) predictions.
    logits, log_dist, sizes = tiny_model.flatten(outs)
    centres, strides, _ = _points(64)
    pred = tiny_model.decode(logits, log_dist, sizes)[0][0]
    idx = dynamic_assign(centres, strides, gt, torch.tensor([0]), pred.detach(), logits[0].detach())
    n_pos = int((idx >= 0).sum())
    assert n_pos >= 1 and parts["pos"] == n_pos / 2
    assert math.isfinite(float(loss.detach())) and float(loss.detach()) == pytest.approx(
        parts["cls"] + 2.0 * parts["box"], rel=1e-5)
    loss.backward()
    assert all(torch.isfinite(h.pred.weight.grad).all() for h in tiny_model.heads)


def test_unknown_assigner_is_refused(tiny_model):
    with pytest.raises(ValueError, match="unknown assigner 'atss'.*fcos.*simota"):
        DetectionLoss(tiny_model, assigner="atss")
