"""Augmentation geometry: letterbox, box transforms, random affine (boxes follow the pixels), mosaic, jitter,
copy-paste."""
from __future__ import annotations

import numpy as np
import pytest

from compress.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PAD_VALUE,
    colour_jitter,
    letterbox,
    letterbox_params,
    mosaic,
    paste_instances,
    random_affine,
    to_tensor_layout,
    train_sample,
    transform_boxes,
)
from compress.voc_eval import pairwise_iou

# BGR colours far from each other, from the black background and from the grey padding.
COLOURS = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255)]


def test_letterbox_params():
    assert letterbox_params(640, 480, 320) == (0.5, 0.0, 40.0)
    assert letterbox_params(480, 640, 320) == (0.5, 40.0, 0.0)
    assert letterbox_params(100, 100, 320) == (3.2, 0.0, 0.0)
    scale, dx, dy = letterbox_params(500, 375, 320)
    assert scale == 0.64 and dx == 0.0 and dy == pytest.approx(40.0)


def test_letterbox_pixels():
    image = np.full((480, 640, 3), (10, 200, 50), np.uint8)
    out, params = letterbox(image, 320)
    assert params == (0.5, 0.0, 40.0)
    assert out.shape == (320, 320, 3) and out.dtype == np.uint8
    assert (out[:40] == PAD_VALUE).all() and (out[280:] == PAD_VALUE).all()
    assert (out[40:280] == (10, 200, 50)).all()
    # Portrait: padding left and right.
    out, params = letterbox(np.zeros((640, 480, 3), np.uint8), 320, pad_value=7)
    assert params == (0.5, 40.0, 0.0)
    assert (out[:, :40] == 7).all() and (out[:, 280:] == 7).all() and (out[:, 40:280] == 0).all()


def test_transform_boxes_exact():
    boxes = np.array([[10, 20, 30, 40], [0, 0, 640, 480]], np.float64)
    out = transform_boxes(boxes, 0.5, 3.0, 40.0)
    assert out.dtype == np.float32
    assert out.tolist() == [[8.0, 50.0, 18.0, 60.0], [3.0, 40.0, 323.0, 280.0]]
    assert boxes.tolist() == [[10, 20, 30, 40], [0, 0, 640, 480]]  # input untouched


def _synthetic(width: int = 120, height: int = 90):
    """Black image with filled rectangles of distinct colours; boxes in continuous pixel coordinates."""
    image = np.zeros((height, width, 3), np.uint8)
    rects = [(8, 10, 40, 50), (52, 6, 80, 30), (60, 40, 112, 84), (14, 60, 44, 86)]  # x1, y1, x2, y2
    for (x1, y1, x2, y2), colour in zip(rects, COLOURS):
        image[y1:y2, x1:x2] = colour  # pixels x1..x2-1 cover [x1, x2) continuously
    return image, np.array(rects, np.float32), np.arange(len(rects), dtype=np.int64)


def _check_boxes_follow_colours(out, boxes, labels, size, colour_tol=40, edge_px=1.5):
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4)
    assert (boxes >= 0).all() and (boxes <= size).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    ys, xs = np.mgrid[0:size, 0:size]
    cx, cy = xs + 0.5, ys + 0.5  # pixel centres
    for box, label in zip(boxes, labels):
        colour = np.array(COLOURS[label], np.float64)
        x1, y1, x2, y2 = box.tolist()
        # Inside the box, away from the interpolated edge: the rectangle's colour.
        inner = (cx > x1 + edge_px) & (cx < x2 - edge_px) & (cy > y1 + edge_px) & (cy < y2 - edge_px)
        if inner.sum() >= 4:
            mean = out[inner].astype(np.float64).mean(0)
            assert np.abs(mean - colour).max() < colour_tol, (label, box, mean)
        # Every pixel of that colour lies inside the box (give or take the interpolation edge).
        near = (np.abs(out.astype(np.int16) - colour.astype(np.int16)) <= colour_tol).all(-1)
        if near.any():
            assert cx[near].min() > x1 - edge_px and cx[near].max() < x2 + edge_px, (label, box)
            assert cy[near].min() > y1 - edge_px and cy[near].max() < y2 + edge_px, (label, box)


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_random_affine_boxes_follow_pixels(flip_prob):
    image, boxes, labels = _synthetic()
    kept_total = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        out, b, lb = random_affine(image, boxes, labels, 96, rng, flip_prob=flip_prob)
        assert len(set(lb.tolist())) == len(lb)
        _check_boxes_follow_colours(out, b, lb, 96)
        kept_total += len(lb)
    assert kept_total >= 40  # on average at least one rectangle survives the random crop


def test_random_affine_flip_lines_up_with_boxes():
    """A flip at scale 1 with no translation is exactly a mirrored image, and the boxes mirror with it."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    boxes = np.array([[10, 20, 30, 40]], np.float32)
    labels = np.array([0])
    out, b, lb = random_affine(image, boxes, labels, 64, np.random.default_rng(1), scale_range=(1, 1), flip_prob=0)
    assert np.array_equal(out, image)
    assert b.tolist() == [[10.0, 20.0, 30.0, 40.0]]
    out, b, lb = random_affine(image, boxes, labels, 64, np.random.default_rng(1), scale_range=(1, 1), flip_prob=1)
    assert np.array_equal(out, image[:, ::-1])
    assert b.tolist() == [[34.0, 20.0, 54.0, 40.0]]
    assert lb.tolist() == [0]


def test_random_affine_drops_boxes_cropped_away():
    image, boxes, labels = _synthetic()
    for seed in range(40):
        out, b, lb = random_affine(image, boxes, labels, 96, np.random.default_rng(seed), scale_range=(1.5, 1.5),
                                   flip_prob=0.0)
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        assert (w >= 2).all() and (h >= 2).all()
        assert lb.dtype == np.int64


def test_mosaic_shape_and_boxes():
    image, boxes, labels = _synthetic()
    for seed in range(10):
        rng = np.random.default_rng(seed)
        out, b, lb = mosaic([image] * 4, [boxes] * 4, [labels] * 4, 96, rng)
        assert out.shape == (96, 96, 3) and out.dtype == np.uint8
        assert b.shape == (len(lb), 4) and b.dtype == np.float32
        assert (b >= 0).all() and (b <= 96).all()
        assert ((b[:, 2] - b[:, 0]) >= 2).all() and ((b[:, 3] - b[:, 1]) >= 2).all()
        assert set(lb.tolist()) <= {0, 1, 2, 3}
        assert len(lb) >= 1
    # Images without boxes: an empty (0, 4) result.
    empty = np.zeros((0, 4), np.float32)
    out, b, lb = mosaic([image] * 4, [empty] * 4, [np.zeros(0, np.int64)] * 4, 64, np.random.default_rng(0))
    assert out.shape == (64, 64, 3) and b.shape == (0, 4) and lb.shape == (0,)


def test_train_sample_mosaic_flip_keeps_boxes_in_range():
    image, boxes, labels = _synthetic()
    extra = [(image, boxes, labels)] * 3
    for seed in range(10):
        out, b, lb = train_sample(image, boxes, labels, 64, np.random.default_rng(seed), flip_prob=1.0,
                                  jitter=False, extra=extra, mosaic_prob=1.0)
        assert out.shape == (64, 64, 3)
        assert (b >= 0).all() and (b <= 64).all() and (b[:, 2] > b[:, 0]).all()


def test_colour_jitter_shape_dtype_and_grey_value():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    out = colour_jitter(image, np.random.default_rng(3))
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    # A grey image has zero saturation, so only the value gain acts: grey v -> clip(v * gain_v).
    grey = np.full((8, 8, 3), 100, np.uint8)
    gains = np.random.default_rng(5).uniform(-1, 1, 3) * np.array([0.015, 0.6, 0.35]) + 1
    out = colour_jitter(grey, np.random.default_rng(5))
    expected = int(np.clip(np.float32(100) * np.float32(gains[2]), 0, 255))
    assert (out == expected).all()
    # No gain at all: only the uint8 HSV round trip remains.
    out = colour_jitter(image, np.random.default_rng(0), hgain=0, sgain=0, vgain=0)
    assert np.abs(out.astype(int) - image.astype(int)).mean() < 2.0


def test_to_tensor_layout_exact():
    image = np.empty((4, 5, 3), np.uint8)
    image[:] = (10, 20, 30)  # B, G, R
    t = to_tensor_layout(image)
    assert t.shape == (3, 4, 5) and t.dtype == np.float32 and t.flags["C_CONTIGUOUS"]
    for c, value in enumerate((30, 20, 10)):  # RGB order
        expected = (np.float32(value) / np.float32(255.0) - np.float32(IMAGENET_MEAN[c])) / np.float32(IMAGENET_STD[c])
        assert np.all(t[c] == expected)
        assert float(t[c, 0, 0]) == pytest.approx((value / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], abs=1e-6)
    # mean 0, std 1: plain scaling to [0, 1].
    t = to_tensor_layout(np.full((2, 2, 3), 255, np.uint8), mean=(0, 0, 0), std=(1, 1, 1))
    assert (t == 1.0).all()


def _donor():
    """A 60 x 40 donor: background 50, the person box (x 10..30, y 10..50) at 200."""
    img = np.full((60, 40, 3), 50, np.uint8)
    img[10:50, 10:30] = 200
    return img, np.array([10, 10, 30, 50], np.float32)


def test_paste_instances_box_follows_the_pixels():
    """The pasted box holds the donor's box pixels (mirrored or not), its context blends into the target, the rest of
    the target and the input arrays are untouched."""
    donor_img, donor_box = _donor()
    target = np.zeros((120, 160, 3), np.uint8)
    old = np.array([[0, 0, 8, 8]], np.float32)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        out, b, lb = paste_instances(target, old, np.array([0]), [(donor_img, donor_box, 3)], rng, margin=0.25)
        assert (target == 0).all()
        assert b.shape == (2, 4) and b.dtype == np.float32 and lb.tolist() == [0, 3]
        assert (b[0] == old[0]).all()
        x1, y1, x2, y2 = b[1]
        h = y2 - y1
        assert 0.05 * 120 - 1e-3 <= h <= min(0.6 * 120, 2 * 40) + 1e-3  # height range, at most 2x enlarged
        assert (x2 - x1) / h == pytest.approx(0.5, abs=0.05)  # the box's aspect survives
        inner = out[int(np.ceil(y1)) + 1:int(y2) - 1, int(np.ceil(x1)) + 1:int(x2) - 1]
        assert inner.size and (np.abs(inner.astype(int) - 200) <= 1).all()
        # Outside the box the pixels are darker: context (50, blended towards the target's 0) or the target itself.
        assert out[int(y2) + 1:, :].max(initial=0) < 200 and out[:, int(x2) + 1:].max(initial=0) < 200
        changed = (out != 0).any(axis=2)
        ys, xs = np.nonzero(changed)
        mx, my = 0.25 * (x2 - x1), 0.25 * (y2 - y1)  # the cut reaches at most the margin beyond the box
        assert xs.min() >= x1 - mx - 1 and xs.max() <= x2 + mx + 1
        assert ys.min() >= y1 - my - 1 and ys.max() <= y2 + my + 1
        # The context ramps: some pixel of the margin lies strictly between the target (0) and the donor's context.
        assert ((out[changed] > 0) & (out[changed] < 50)).any()
    # Mirroring: a donor whose box has a bright left half; it lands on either side of the pasted box.
    donor_img = np.full((60, 40, 3), 50, np.uint8)
    donor_img[10:50, 10:20] = 250
    donor_img[10:50, 20:30] = 150
    sides = set()
    for seed in range(20):
        out, b, _ = paste_instances(np.zeros((120, 160, 3), np.uint8), np.zeros((0, 4), np.float32),
                                    np.zeros(0, np.int64), [(donor_img, donor_box, 0)], np.random.default_rng(seed))
        x1, y1, x2, y2 = b[0]
        row = out[int((y1 + y2) / 2), int(np.ceil(x1)) + 1:int(x2) - 1, 0].astype(int)
        if len(row) < 4:
            continue
        left, right = row[: len(row) // 3].mean(), row[-(len(row) // 3):].mean()
        assert abs(left - right) > 50
        sides.add(left > right)
    assert sides == {True, False}


def test_paste_instances_respects_existing_boxes():
    donor_img, donor_box = _donor()
    target = np.zeros((100, 100, 3), np.uint8)
    # A box over the whole image: any placement hides part of it; with max_cover 0 nothing may be pasted.
    whole = np.array([[0, 0, 100, 100]], np.float32)
    out, b, lb = paste_instances(target, whole, np.array([0]), [(donor_img, donor_box, 0)] * 3,
                                 np.random.default_rng(0), max_cover=0.0)
    assert (out == 0).all() and b.tolist() == whole.tolist() and lb.tolist() == [0]
    # Overlap: no pasted box has IoU > max_iou with an existing one, nor hides more than max_cover of it.
    existing = np.array([[20, 20, 60, 90], [70, 10, 95, 50]], np.float32)
    for seed in range(20):
        _, b, _ = paste_instances(target, existing, np.array([0, 0]), [(donor_img, donor_box, 0)] * 3,
                                  np.random.default_rng(seed), max_iou=0.3, max_cover=0.5)
        new = b[2:]
        assert (pairwise_iou(new, existing) <= 0.3 + 1e-6).all()
        # The cover limit holds for the whole cut (box + context), so for the box inside it too.
        for n in new:
            for e in existing:
                iw = max(0.0, min(n[2], e[2]) - max(n[0], e[0]))
                ih = max(0.0, min(n[3], e[3]) - max(n[1], e[1]))
                assert iw * ih / ((e[2] - e[0]) * (e[3] - e[1])) <= 0.5 + 1e-6
