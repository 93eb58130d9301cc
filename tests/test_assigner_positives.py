"""benchmarks/assigner_positives.py: positive points per box under FCOS's rule and SimOTA, per data source."""
import json

import pytest
import torch

from benchmarks.assigner_positives import main, positives_per_box, summarise
from compress.augment import letterbox_params, transform_boxes
from compress.checkpoint import default_checkpoint, load_model
from compress.loss import DetectionLoss, assign
from compress.voc import VOCDataset, load_image

pytestmark = pytest.mark.usefixtures("one_thread")


def test_summarise_hand_computed() -> None:
    rows = summarise({"mot15": {"fcos": [4, 2, 0, 2], "simota": [1, 1, 1, 1]},
                      "coco": {"fcos": [3], "simota": [0]}})
    assert [r["source"] for r in rows] == ["coco", "mot15"]
    coco, mot = rows
    assert coco["boxes"] == 1 and coco["fcos"] == {"mean": 3.0, "none": 0.0, "max": 3}
    assert coco["simota"] == {"mean": 0.0, "none": 1.0, "max": 0} and coco["ratio"] == 0.0
    assert mot["boxes"] == 4 and mot["fcos"] == {"mean": 2.0, "none": 0.25, "max": 4}
    assert mot["simota"]["mean"] == 1.0 and mot["ratio"] == 0.5


def test_positives_on_the_voc2007_sample(voc_sample) -> None:
    model, _ = load_model(default_checkpoint())
    dataset = VOCDataset(voc_sample, "trainval")
    counts = positives_per_box(model, dataset)
    assert list(counts) == ["all"]  # plain VOC ids carry no source prefix
    boxes = sum(len(a.boxes) for a in dataset.annotations)
    assert boxes > 0 and len(counts["all"]["fcos"]) == len(counts["all"]["simota"]) == boxes
    # FCOS's counts are the fixed rule's, image by image, in the dataset's box order.
    ann = next(a for a in dataset.annotations if len(a.boxes))
    image = load_image(ann.image_path)
    scale, dx, dy = letterbox_params(image.shape[1], image.shape[0], 320)
    loss = DetectionLoss(model)
    sizes = [(320 // s, 320 // s) for s in model.strides]
    centres, strides, levels = loss._points(sizes, torch.device("cpu"))
    gt = torch.from_numpy(transform_boxes(ann.boxes, scale, dx, dy))
    idx = assign(centres, strides, levels, gt, loss.ranges, loss.radius)
    assert counts["all"]["fcos"][:len(gt)] == torch.bincount(idx[idx >= 0], minlength=len(gt)).tolist()
    # SimOTA takes at most the summed ten best IoUs (<= 10) per box.
    assert max(counts["all"]["simota"]) <= 10 and sum(counts["all"]["simota"]) > 0


def test_main_writes_the_report(voc_sample, tmp_path) -> None:
    report = main(["--data", str(voc_sample), "--split", "test", "--threads", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "assigner_positives.json").read_text())
    assert saved["results"] == report["results"] and saved["split"] == "test"
    [res] = saved["results"]
    assert res["checkpoint"] == default_checkpoint().name and res["input_size"] == 320
    md = (tmp_path / "assigner_positives.md").read_text()
    assert "| all | " in md and "SimOTA / FCOS" in md
    assert (tmp_path / "assigner_positives.png").stat().st_size > 0
