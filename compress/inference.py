"""Batched inference of a torch detector over a VOC split, and its evaluation.

Pre-processing is the deploy letterbox (``compress.augment.letterbox``); boxes are mapped back to original
image pixels before NMS results are compared with the ground truth.
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch

from compress.augment import IMAGENET_MEAN, IMAGENET_STD, letterbox, to_tensor_layout
from compress.detector import Detector
from compress.nms import postprocess
from compress.voc import VOCDataset, load_image
from compress.voc_eval import Detections, evaluate_all


def unletterbox(boxes: np.ndarray, scale: float, dx: float, dy: float, width: int, height: int) -> np.ndarray:
    out = boxes.astype(np.float64).copy()
    out[:, [0, 2]] = ((out[:, [0, 2]] - dx) / scale).clip(0, width)
    out[:, [1, 3]] = ((out[:, [1, 3]] - dy) / scale).clip(0, height)
    return out


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def predict_dataset(
    model: Detector,
    dataset: VOCDataset,
    input_size: int,
    batch_size: int = 16,
    score_threshold: float = 0.01,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    pre_nms_topk: int = 1000,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    progress: bool = False,
) -> Tuple[Dict[str, Detections], Dict[str, float]]:
    """Detections per image id, in original image coordinates, and timing figures."""
    was_export = model.export_mode
    was_training = model.training
    model.eval()
    model.export_mode = True
    detections: Dict[str, Detections] = {}
    t_model = 0.0
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(dataset), desc="eval", unit="img", leave=False)
    try:
        for chunk in _batches(list(dataset.annotations), batch_size):
            tensors, metas = [], []
            for ann in chunk:
                img = load_image(ann.image_path, (ann.width, ann.height))
                lb, (s, dx, dy) = letterbox(img, input_size)
                tensors.append(to_tensor_layout(lb, mean, std))
                metas.append((ann, s, dx, dy))
            batch = torch.from_numpy(np.stack(tensors))
            tm = time.perf_counter()
            boxes, scores = model(batch)
            t_model += time.perf_counter() - tm
            for i, (ann, s, dx, dy) in enumerate(metas):
                b, sc, lab = postprocess(boxes[i], scores[i], score_threshold, nms_iou, max_detections, pre_nms_topk)
                detections[ann.image_id] = Detections(
                    unletterbox(b.numpy(), s, dx, dy, ann.width, ann.height), sc.numpy().astype(np.float64),
                    lab.numpy().astype(np.int64),
                )
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        model.export_mode = was_export
        model.train(was_training)
    total = time.perf_counter() - t0
    return detections, {"seconds": total, "model_seconds": t_model, "images": len(dataset),
                        "images_per_second": len(dataset) / max(total, 1e-9)}


def prediction_settings(eval_cfg: Optional[dict] = None) -> Dict:
    """The ``predict_dataset`` keywords of a configuration's ``eval`` section (defaults for missing keys)."""
    cfg = dict(eval_cfg or {})
    return {"batch_size": int(cfg.get("batch_size", 16)), "score_threshold": float(cfg.get("score_threshold", 0.01)),
            "nms_iou": float(cfg.get("nms_iou", 0.6)), "max_detections": int(cfg.get("max_detections", 100)),
            "pre_nms_topk": int(cfg.get("pre_nms_topk", 1000))}


def evaluate_model(model: Detector, dataset: VOCDataset, input_size: int, eval_cfg: Optional[dict] = None,
                   progress: bool = False) -> Dict:
    """Per-class AP50 (VOC07 11-point and all-point), per source when ids carry a source prefix."""
    dets, timing = predict_dataset(model, dataset, input_size, progress=progress, **prediction_settings(eval_cfg))
    result = evaluate_all(dets, dataset.ground_truths(), list(dataset.classes))
    result["timing"] = timing
    result["num_images"] = len(dataset)
    result["split"] = dataset.split
    return result


def summary_ap(result: Dict, metric: str = "voc07_11point") -> Dict[str, float]:
    """Flat {"overall": ap, "<source>": ap} for the first class (person by default)."""
    first = next(iter(result[metric]["ap"]))
    out = {"overall": float(result[metric]["ap"][first])}
    for src, res in result.get("per_source", {}).items():
        out[src] = float(res[metric]["ap"][first])
    return out
