"""benchmarks/accuracy_by_size.py: object heights in network-input pixels, and recall/AP per size range on the
genuine VOC2007 sample with hand-made detections (hand-computed figures)."""
import json
import math

import numpy as np
import pytest

from benchmarks.accuracy_by_size import (breakdown, detection_kinds, input_heights, main, on_negative_images,
                                         placement_kinds, size_ranges)
from compress.voc import VOCDataset
from compress.voc_eval import Detections, pairwise_iou

TOL = 1e-9


def test_size_ranges() -> None:
    assert size_ranges([16, 32]) == [(0.0, math.inf), (0.0, 16.0), (16.0, 32.0), (32.0, math.inf), (16.0, math.inf)]
    assert size_ranges([64]) == [(0.0, math.inf), (0.0, 64.0), (64.0, math.inf)]
    for bad in ([], [32, 16], [0, 16], [16, 16]):
        with pytest.raises(ValueError, match="positive and increasing"):
            size_ranges(bad)


def test_breakdown_on_the_voc_sample(voc_sample) -> None:
    ds = VOCDataset(voc_sample, "trainval")  # persons in 000009 (500x375) and 000032 (500x281)
    heights = input_heights(ds, 320)
    # VOC's inclusive pixels: height = ymax - ymin + 1, times 320 / 500 (the longer side).
    np.testing.assert_allclose(heights["000009"], [144 * 0.64, 131 * 0.64, 132 * 0.64], rtol=1e-6)
    np.testing.assert_allclose(heights["000032"], [50 * 0.64, 50 * 0.64], rtol=1e-6)
    assert heights["000005"].shape == (0,)
    gt = ds.ground_truths()["000009"]
    dets = {"000009": Detections(gt.boxes.copy(), np.array([0.9, 0.8, 0.2]), np.zeros(3, dtype=np.int64))}
    rows, kinds, placements, negatives = breakdown(dets, ds, 320, [40, 88], deploy_threshold=0.3)
    assert kinds["all"]["true"] == 2 and sum(placements["all"].values()) == kinds["all"]["localisation"] == 0
    # no detection on the person-less images (000005 and the others of the sample without a person)
    empty = sorted(i for i, g in ds.ground_truths().items() if len(g.labels) == 0)
    assert "000005" in empty and negatives == {"all": {"images": len(empty), "detections": 0}}
    rows = {r["range"]: r for r in rows}
    assert list(rows) == ["all", "0-40", "40-88", ">=88", ">=40"]  # no id has a source prefix: "all" only
    expect = {  # gt, AP50 (11-point), recall, recall at score >= 0.3
        "all": (5, 7 / 11, 3 / 5, 2 / 5),  # TP TP TP over 5 positives: recall .2 .4 .6 at precision 1
        "0-40": (2, 0.0, 0.0, 0.0),  # the two 32-px persons of 000032 are missed
        "40-88": (2, 1.0, 1.0, 0.5),  # the 84.48-px one only at score 0.2
        ">=88": (1, 1.0, 1.0, 1.0),
        ">=40": (3, 1.0, 1.0, 2 / 3),
    }
    for name, (n, ap50, recall, deploy) in expect.items():
        r = rows[name]
        assert (r["gt"], r["ap50"], r["recall"], r["recall_deploy"]) == pytest.approx((n, ap50, recall, deploy),
                                                                                     abs=TOL), name


def test_detection_kinds_by_hand(voc_sample) -> None:
    gts = VOCDataset(voc_sample, "trainval").ground_truths()
    a, b, c = gts["000009"].boxes.astype(np.float64)  # three persons, heights 144, 131, 132 px
    shifted = a.copy()
    shifted[3] = a[1] + 3 * (a[3] - a[1])  # three times as tall, same width: IoU 1/3 with a
    far = np.array([0.0, 0.0, 5.0, 5.0])
    boxes = np.stack([a, a, shifted, far, b, c])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1])
    dets = {"000009": Detections(boxes, scores, np.zeros(6, dtype=np.int64))}
    # a: true; a again: duplicate; shifted (IoU 1/3 with a): localisation; far: background; b: true (its IoU with
    # a is below 0.5, checked next); c at 0.1: below the threshold.
    assert pairwise_iou(b[None], a[None])[0, 0] < 0.5
    counts = detection_kinds(dets, {"000009": gts["000009"]}, threshold=0.3)
    assert counts == {"true": 2, "duplicate": 1, "localisation": 1, "background": 1, "ignored": 0}
    hard = {"000009": gts["000009"]._replace(difficult=np.array([True, False, False]))}
    assert detection_kinds(dets, hard, 0.3) == {"true": 1, "duplicate": 0, "localisation": 1, "background": 1,
                                                "ignored": 2}
    # On an image without a person every detection is background; those at >= 0.3 are counted apart as well.
    assert len(gts["000005"].labels) == 0
    nothing = {"000005": Detections(np.stack([far, a]), np.array([0.95, 0.2]), np.zeros(2, dtype=np.int64))}
    both = {"000009": gts["000009"], "000005": gts["000005"]}
    assert detection_kinds({**dets, **nothing}, both, 0.3) == dict(counts, background=2)
    assert on_negative_images({**dets, **nothing}, both, 0.3) == {"images": 1, "detections": 1}
    assert on_negative_images(dets, both, 0.3) == {"images": 1, "detections": 0}  # 000009's far box is not on one


def test_placement_kinds_by_hand(voc_sample) -> None:
    gt = VOCDataset(voc_sample, "trainval").ground_truths()["000009"]
    a, b, c = gt.boxes.astype(np.float64)  # a = (149, 140, 229, 284), 80 x 144; b and c overlap, right of a
    boxes = np.array([
        [149, 140, 327, 331],  # around all three: IoU 11520 / 33998 = 0.34 with a -> several
        [149, 140, 229, 572],  # a three times as tall: holds a only, IoU 1/3 -> too large
        [149, 140, 229, 188],  # a's top third: IoU 1/3, lies inside a -> too small
        [189, 140, 269, 284],  # a moved right by half its width: IoU 1/3, half of each in the other -> shifted
        [0, 0, 5, 5],          # background: not a placement
        a,                     # true: not a placement
    ], dtype=np.float64)
    iou = pairwise_iou(boxes[:4], gt.boxes).max(1)
    np.testing.assert_allclose(iou, [11520 / 33998, 1 / 3, 1 / 3, 1 / 3], atol=1e-12)
    dets = {"000009": Detections(boxes, np.linspace(0.9, 0.4, 6), np.zeros(6, dtype=np.int64))}
    gts = {"000009": gt}
    assert detection_kinds(dets, gts, 0.3)["localisation"] == 4
    assert placement_kinds(dets, gts, 0.3) == {"several": 1, "too large": 1, "too small": 1, "shifted": 1}
    # Below the threshold nothing is counted; a box around two objects of another class holds none of its own.
    assert placement_kinds(dets, gts, 0.95) == dict.fromkeys(("several", "too large", "too small", "shifted"), 0)
    other = {"000009": gt._replace(labels=np.array([0, 1, 1]))}  # b and c made another class
    assert placement_kinds({"000009": Detections(boxes[:1], np.array([0.9]), np.zeros(1, dtype=np.int64))},
                           other, 0.3) == {"several": 0, "too large": 1, "too small": 0, "shifted": 0}


def test_main_writes_the_report(voc_sample, tmp_path) -> None:
    report = main(["--data", str(voc_sample), "--splits", "test", "--edges", "64", "--threads", "1",
                   "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "accuracy_by_size.json").read_text())
    assert saved["results"][0]["split"] == "test" and saved["results"][0]["images"] == 7
    rows = {r["range"]: r for r in saved["results"][0]["rows"]}
    # Test persons: 000001 (487 px of 500 -> 311.7) and 000010 (213 px of 480 -> 142.0): none below 64 px.
    assert [rows[k]["gt"] for k in ("all", "0-64", ">=64")] == [2, 0, 2]
    assert rows["0-64"]["recall"] is None and rows["0-64"]["ap50"] is None and rows["all"]["ap50"] == pytest.approx(rows[">=64"]["ap50"], abs=TOL)
    assert report["results"][0]["rows"] == saved["results"][0]["rows"]
    assert "| all |" in (tmp_path / "accuracy_by_size.md").read_text()
    # The true detections at the deploy threshold are the VOC matcher's true positives there.
    counts = saved["results"][0]["deploy_detections"]["all"]
    assert counts["true"] == round(rows["all"]["recall_deploy"] * rows["all"]["gt"])
    negatives = saved["results"][0]["deploy_on_negatives"]["all"]
    assert negatives["detections"] <= counts["background"] and negatives["images"] == 5  # test images without a person
    assert "on images without objects" in (tmp_path / "accuracy_by_size.md").read_text()
    placements = saved["results"][0]["deploy_placements"]["all"]
    assert sum(placements.values()) == counts["localisation"]


def test_bad_edges_are_refused_before_any_work(voc_sample, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--data", str(voc_sample), "--edges", "32", "16", "--out", str(tmp_path)])
    assert "positive and increasing" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_plot_of_two_checkpoints(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from benchmarks.accuracy_by_size import plot

    rows = [{"source": "all", "range": n, "gt": 20, "recall": 0.5} for n in ("all", "0-16", ">=16")]
    results = [{"checkpoint": c, "split": s, "rows": rows} for c in ("a.pt", "b.pt") for s in ("test", "trainval")]
    plot(tmp_path / "p.png", results, [16])
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_input_sizes_evaluate_each_checkpoint_at_each_size(voc_sample, tmp_path) -> None:
    main(["--data", str(voc_sample), "--splits", "test", "--edges", "64", "--threads", "1",
          "--input-sizes", "256", "384", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "accuracy_by_size.json").read_text())
    assert [(r["checkpoint"], r["input_size"], r["trained_input_size"]) for r in saved["results"]] == [
        ("baseline_person_320.pt@256", 256, 320), ("baseline_person_320.pt@384", 384, 320)]
    # Heights stay measured at the trained 320 (the same people per range at both sizes): 142.0 and 311.7 px.
    for res in saved["results"]:
        assert {r["range"]: r["gt"] for r in res["rows"] if r["source"] == "all"} == {"all": 2, "0-64": 0, ">=64": 2}
    assert "trained at 320" in (tmp_path / "accuracy_by_size.md").read_text()
    main(["--data", str(voc_sample), "--splits", "test", "--edges", "200", "--threads", "1",
          "--input-sizes", "640", "--out", str(tmp_path)])
    rows = {r["range"]: r["gt"] for r in json.loads((tmp_path / "accuracy_by_size.json").read_text())["results"][0][
        "rows"] if r["source"] == "all"}
    assert rows == {"all": 2, "0-200": 1, ">=200": 1}  # at 640 both would be over 200 px


def test_input_sizes_must_be_multiples_of_32(voc_sample, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--data", str(voc_sample), "--input-sizes", "320", "300", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "multiples of 32" in err and "[300]" in err
    assert list(tmp_path.iterdir()) == []
