"""Image geometry for training and evaluation: letterbox, random scale/crop, flip, colour jitter, mosaic,
copy-paste of annotated instances.

Every geometric step is one affine map (scale + translation) applied with a single ``cv2.warpAffine``, so the
boxes follow the image exactly. The letterbox used at evaluation time is the same one that the deploy bundle's
manifest describes for the device (scale to fit, centred, padded with ``pad_value``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import cv2
import numpy as np

from compress.voc_eval import pairwise_iou

PAD_VALUE = 114
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, on [0, 1] pixels
IMAGENET_STD = (0.229, 0.224, 0.225)


def letterbox_params(width: int, height: int, size: int) -> Tuple[float, float, float]:
    """Scale and (dx, dy) offsets that fit a width x height image centred into a size x size square."""
    scale = min(size / width, size / height)
    dx = (size - width * scale) / 2.0
    dy = (size - height * scale) / 2.0
    return scale, dx, dy


def warp(image: np.ndarray, scale: float, dx: float, dy: float, size: int, pad_value: int = PAD_VALUE) -> np.ndarray:
    matrix = np.array([[scale, 0.0, dx], [0.0, scale, dy]], dtype=np.float64)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(
        image, matrix, (size, size), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=(pad_value,) * 3
    )


def letterbox(image: np.ndarray, size: int, pad_value: int = PAD_VALUE) -> Tuple[np.ndarray, Tuple[float, float, float]]:
    h, w = image.shape[:2]
    scale, dx, dy = letterbox_params(w, h, size)
    return warp(image, scale, dx, dy, size, pad_value), (scale, dx, dy)


def transform_boxes(boxes: np.ndarray, scale: float, dx: float, dy: float) -> np.ndarray:
    out = boxes.astype(np.float32).copy()
    out[:, [0, 2]] = out[:, [0, 2]] * scale + dx
    out[:, [1, 3]] = out[:, [1, 3]] * scale + dy
    return out


def to_tensor_layout(image_bgr: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """BGR uint8 HWC -> normalised RGB float32 CHW."""
    rgb = image_bgr[:, :, ::-1].astype(np.float32) / 255.0
    rgb = (rgb - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def colour_jitter(image: np.ndarray, rng: np.random.Generator, hgain=0.015, sgain=0.6, vgain=0.35) -> np.ndarray:
    """Random HSV gains (the YOLO recipe)."""
    gains = rng.uniform(-1, 1, 3) * np.array([hgain, sgain, vgain]) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(image, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x * gains[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * gains[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * gains[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def clip_and_filter(
    boxes: np.ndarray, labels: np.ndarray, orig_area: np.ndarray, size: int, min_size: float = 2.0,
    min_visible: float = 0.25,
) -> Tuple[np.ndarray, np.ndarray]:
    """Clip boxes to the canvas, drop those mostly cropped away or too small."""
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, size)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, size)
    w = clipped[:, 2] - clipped[:, 0]
    h = clipped[:, 3] - clipped[:, 1]
    keep = (w >= min_size) & (h >= min_size) & (w * h >= min_visible * np.maximum(orig_area, 1e-6))
    return clipped[keep], labels[keep]


def random_affine(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    size: int,
    rng: np.random.Generator,
    scale_range: Tuple[float, float] = (0.5, 1.5),
    flip_prob: float = 0.5,
    pad_value: int = PAD_VALUE,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Letterbox scale times a random factor, random placement (crop or pad), optional horizontal flip."""
    h, w = image.shape[:2]
    base, _, _ = letterbox_params(w, h, size)
    scale = base * float(rng.uniform(*scale_range))
    new_w, new_h = w * scale, h * scale
    # Placement: anywhere such that the image overlaps the canvas by at least half of the smaller extent.
    dx = float(rng.uniform(min(0.0, size - new_w), max(0.0, size - new_w)))
    dy = float(rng.uniform(min(0.0, size - new_h), max(0.0, size - new_h)))
    if rng.random() < flip_prob:
        # Flip maps x -> (w - x): fold it into the affine map. warpAffine maps pixel indices, and the mirror of
        # index i is w - 1 - i, hence the translation dx + scale * (w - 1) (dx + new_w put the image 1 px right).
        matrix = np.array([[-scale, 0.0, dx + scale * (w - 1)], [0.0, scale, dy]], dtype=np.float64)
        flipped = boxes.copy()
        flipped[:, 0], flipped[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
        boxes = flipped
        sx, tx = scale, dx
    else:
        matrix = np.array([[scale, 0.0, dx], [0.0, scale, dy]], dtype=np.float64)
        sx, tx = scale, dx
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = cv2.warpAffine(
        image, matrix, (size, size), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=(pad_value,) * 3
    )
    tb = transform_boxes(boxes, sx, tx, dy)
    orig_area = (tb[:, 2] - tb[:, 0]) * (tb[:, 3] - tb[:, 1])
    tb, labels = clip_and_filter(tb, labels, orig_area, size)
    return out, tb, labels


def mosaic(
    images: list, boxes_list: list, labels_list: list, size: int, rng: np.random.Generator,
    pad_value: int = PAD_VALUE,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four images, each letterboxed into one quadrant of a 2*size canvas at a random centre, then halved."""
    big = 2 * size
    canvas = np.full((big, big, 3), pad_value, dtype=np.uint8)
    cx, cy = (int(rng.uniform(0.5 * size, 1.5 * size)) for _ in range(2))
    all_boxes, all_labels = [], []
    for k, (img, bx, lb) in enumerate(zip(images, boxes_list, labels_list)):
        h, w = img.shape[:2]
        s = size / max(h, w) * float(rng.uniform(0.7, 1.3))
        nw, nh = w * s, h * s
        x0 = cx - nw if k in (0, 2) else cx
        y0 = cy - nh if k in (0, 1) else cy
        matrix = np.array([[s, 0.0, x0], [0.0, s, y0]], dtype=np.float64)
        # Render the quadrant only, so images do not overwrite each other outside their cell.
        qx0, qy0 = (0, 0) if k == 0 else (cx, 0) if k == 1 else (0, cy) if k == 2 else (cx, cy)
        qx1, qy1 = (cx, cy) if k == 0 else (big, cy) if k == 1 else (cx, big) if k == 2 else (big, big)
        if qx1 <= qx0 or qy1 <= qy0:
            continue
        m = matrix.copy()
        m[0, 2] -= qx0
        m[1, 2] -= qy0
        tile = cv2.warpAffine(img, m, (qx1 - qx0, qy1 - qy0), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(pad_value,) * 3)
        canvas[qy0:qy1, qx0:qx1] = tile
        tb = transform_boxes(bx, s, x0, y0)
        area = (tb[:, 2] - tb[:, 0]) * (tb[:, 3] - tb[:, 1])
        tb[:, [0, 2]] = tb[:, [0, 2]].clip(qx0, qx1)
        tb[:, [1, 3]] = tb[:, [1, 3]].clip(qy0, qy1)
        w_ = tb[:, 2] - tb[:, 0]
        h_ = tb[:, 3] - tb[:, 1]
        keep = (w_ * h_ >= 0.25 * np.maximum(area, 1e-6)) & (w_ > 2) & (h_ > 2)
        all_boxes.append(tb[keep])
        all_labels.append(lb[keep])
    out = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    boxes = np.concatenate(all_boxes, 0) * 0.5 if all_boxes else np.zeros((0, 4), np.float32)
    labels = np.concatenate(all_labels, 0) if all_labels else np.zeros((0,), np.int64)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    boxes, labels = clip_and_filter(boxes.astype(np.float32), labels, area, size)
    return out, boxes, labels


def paste_instances(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, donors: list, rng: np.random.Generator,
    height_range: Tuple[float, float] = (0.05, 0.6), margin: float = 0.15, max_upscale: float = 2.0,
    max_cover: float = 0.5, max_iou: float = 0.3, tries: int = 10,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Box-level copy-paste: each donor ``(donor_image, box, label)`` is cut out with ``margin`` of context on every
    side, resized so its box is a log-uniform ``height_range`` fraction of this image's height (never enlarged more
    than ``max_upscale``), mirrored half the time and blended in with an alpha that ramps from 0 at the cut's edge to
    1 at the box, so the cut leaves no hard seam. A placement is drawn again (up to ``tries`` times, else the donor is
    skipped) when it would hide more than ``max_cover`` of a box already there or overlap one with IoU above
    ``max_iou``. Works on the image before the geometric augmentation; returns a new image, the boxes with the pasted
    ones appended, and their labels. The input image is not modified."""
    out = image.copy()
    h_img, w_img = image.shape[:2]
    all_boxes = [b for b in boxes.astype(np.float32)]
    all_labels = [int(v) for v in labels]
    for donor_img, box, label in donors:
        x1, y1, x2, y2 = (float(v) for v in box)
        bw, bh = x2 - x1, y2 - y1
        if bw < 2 or bh < 2:
            continue
        dh, dw = donor_img.shape[:2]
        mx, my = margin * bw, margin * bh
        cx1, cy1 = int(max(0.0, np.floor(x1 - mx))), int(max(0.0, np.floor(y1 - my)))
        cx2, cy2 = int(min(float(dw), np.ceil(x2 + mx))), int(min(float(dh), np.ceil(y2 + my)))
        lo, hi = np.log(height_range[0] * h_img), np.log(height_range[1] * h_img)
        scale = min(float(np.exp(rng.uniform(lo, hi))) / bh, max_upscale)
        pw, ph = int(round((cx2 - cx1) * scale)), int(round((cy2 - cy1) * scale))
        if pw < 2 or ph < 2 or pw > w_img or ph > h_img:
            continue
        patch = cv2.resize(donor_img[cy1:cy2, cx1:cx2], (pw, ph),
                           interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        # The box inside the patch, in patch pixels.
        bx1, by1 = (x1 - cx1) * pw / (cx2 - cx1), (y1 - cy1) * ph / (cy2 - cy1)
        bx2, by2 = (x2 - cx1) * pw / (cx2 - cx1), (y2 - cy1) * ph / (cy2 - cy1)
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
            bx1, bx2 = pw - bx2, pw - bx1
        # Alpha: 1 on the box, falling linearly to 0 at the patch edge across the margin.
        xs = np.arange(pw, dtype=np.float32) + 0.5
        ys = np.arange(ph, dtype=np.float32) + 0.5
        ax = np.minimum(np.clip(xs / max(bx1, 1e-3), 0, 1), np.clip((pw - xs) / max(pw - bx2, 1e-3), 0, 1))
        ay = np.minimum(np.clip(ys / max(by1, 1e-3), 0, 1), np.clip((ph - ys) / max(ph - by2, 1e-3), 0, 1))
        alpha = np.minimum(ay[:, None], ax[None, :])[:, :, None]
        existing = np.asarray(all_boxes, np.float32).reshape(-1, 4)
        area = np.maximum((existing[:, 2] - existing[:, 0]) * (existing[:, 3] - existing[:, 1]), 1e-6)
        for _ in range(tries):
            px, py = int(rng.integers(0, w_img - pw + 1)), int(rng.integers(0, h_img - ph + 1))
            new_box = np.array([px + bx1, py + by1, px + bx2, py + by2], np.float32)
            if len(existing):
                ix = np.clip(np.minimum(existing[:, 2], px + pw) - np.maximum(existing[:, 0], px), 0, None)
                iy = np.clip(np.minimum(existing[:, 3], py + ph) - np.maximum(existing[:, 1], py), 0, None)
                if (ix * iy / area > max_cover).any():
                    continue
                if (pairwise_iou(new_box[None], existing) > max_iou).any():
                    continue
            region = out[py:py + ph, px:px + pw].astype(np.float32)
            out[py:py + ph, px:px + pw] = (alpha * patch + (1 - alpha) * region + 0.5).astype(np.uint8)
            all_boxes.append(new_box)
            all_labels.append(int(label))
            break
    return (out, np.asarray(all_boxes, np.float32).reshape(-1, 4), np.asarray(all_labels, np.int64))


def maybe(rng: np.random.Generator, p: float) -> bool:
    return p > 0 and rng.random() < p


def train_sample(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator,
    scale_range=(0.5, 1.5), flip_prob=0.5, jitter=True, extra: Optional[list] = None, mosaic_prob: float = 0.0,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented training sample. ``extra`` holds three more (image, boxes, labels) for mosaic."""
    if extra is not None and maybe(rng, mosaic_prob):
        imgs = [image] + [e[0] for e in extra]
        bxs = [boxes] + [e[1] for e in extra]
        lbs = [labels] + [e[2] for e in extra]
        out, b, lb = mosaic(imgs, bxs, lbs, size, rng)
        if rng.random() < flip_prob:
            out = out[:, ::-1].copy()
            b = b.copy()
            b[:, 0], b[:, 2] = size - b[:, 2], size - b[:, 0].copy()
    else:
        out, b, lb = random_affine(image, boxes, labels, size, rng, scale_range, flip_prob)
    if jitter:
        out = colour_jitter(out, rng)
    return out, b, lb
