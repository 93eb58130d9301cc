"""benchmarks/ap_ceiling.py: the perfect-precision bound of the 11-point metric, the height oracles and the ideal
re-ranking of a detector's own boxes, on the genuine VOC2007 sample with hand-made detections (hand-computed
figures)."""
import json

import numpy as np
import pytest

from benchmarks.accuracy_by_size import input_heights
from benchmarks.ap_ceiling import ideal_ranking, main, oracle, perfect_precision_ap11, score
from compress.checkpoint import default_checkpoint, save_checkpoint
from compress.voc import VOCDataset
from compress.voc_eval import Detections, evaluate_detections
from tests.nets import random_detector, tiny_config

TOL = 1e-9


def test_perfect_precision_ap11() -> None:
    assert perfect_precision_ap11(1.0) == 1.0
    assert perfect_precision_ap11(0.7874) == pytest.approx(8 / 11)  # levels 0, 0.1, ..., 0.7
    assert perfect_precision_ap11(0.8) == pytest.approx(9 / 11)  # 0.8 itself is reached
    assert perfect_precision_ap11(0.05) == pytest.approx(1 / 11)
    assert perfect_precision_ap11(0.0) == 0.0


def test_the_bound_is_what_the_evaluation_gives(voc_sample) -> None:
    """Every person found at score 1 and nothing else, one less each time: the evaluation's AP is the bound."""
    ds = VOCDataset(voc_sample, "trainval")
    gts = ds.ground_truths()
    found = oracle(gts, input_heights(ds, 320), 0.0)
    npos = sum(len(d.scores) for d in found.values())
    assert npos == 5  # the five persons of the sample's trainval images, none difficult
    ap = evaluate_detections(found, gts, ds.classes)["map"]
    assert ap == pytest.approx(perfect_precision_ap11(1.0), abs=TOL)


def test_oracle_by_height(voc_sample) -> None:
    ds = VOCDataset(voc_sample, "trainval")  # person heights at 320: 92.16, 83.84, 84.48 (000009), 32, 32 (000032)
    gts, heights = ds.ground_truths(), input_heights(ds, 320)
    expect = {0.0: (5, 1.0, 1.0), 40.0: (3, 7 / 11, 0.6), 84.0: (2, 5 / 11, 0.4), 88.0: (1, 3 / 11, 0.2),
              100.0: (0, 0.0, 0.0)}
    for h, (n, ap11, recall) in expect.items():
        dets = oracle(gts, heights, h)
        assert sum(len(d.scores) for d in dets.values()) == n
        assert all(np.all(d.scores == 1.0) for d in dets.values())
        row = score(f"oracle >= {h:g}", "oracle", dets, gts, ds.classes)["overall"]
        assert (row["ap50_11pt"], row["ap50_all_point"], row["recall"], row["positives"]) == pytest.approx(
            (ap11, recall, recall, 5), abs=TOL), h


def test_ideal_ranking_by_hand(voc_sample) -> None:
    ds = VOCDataset(voc_sample, "trainval")
    gts = ds.ground_truths()
    a, b, _ = gts["000009"].boxes.astype(np.float64)
    shifted = a.copy()
    shifted[3] = a[1] + 3 * (a[3] - a[1])  # three times as tall: IoU 1/3 with a, not a true positive
    far = np.array([0.0, 0.0, 5.0, 5.0])
    inside_b = b.copy()
    inside_b[2] = b[0] + 0.6 * (b[2] - b[0])  # 60% of b's width: IoU 0.6 with b
    boxes = np.stack([far, a, a, shifted, b, inside_b])
    scores = np.array([0.9, 0.2, 0.5, 0.8, 0.1, 0.3])
    dets = {"000009": Detections(boxes, scores, np.zeros(6, dtype=np.int64))}
    # As scored: far .9 FP, shifted .8 FP, a .5 TP, inside_b .3 TP, a .2 duplicate, b .1 duplicate;
    # 5 positives: recall .2 at precision 1/3, .4 at 2/4; the best precision at recall >= t is 1/2 for t = 0 to
    # 0.4 -> 11-point 5 x 1/2 / 11.
    plain = evaluate_detections(dets, gts, ds.classes)["map"]
    assert plain == pytest.approx(5 * 0.5 / 11, abs=TOL)
    ideal = ideal_ranking(dets, gts)["000009"]
    # Per object the candidate of largest IoU: for a the .5 one (tie at IoU 1 -> higher score), for b the exact box.
    np.testing.assert_allclose(ideal.scores, [0.9, 0.2, 1.5, 0.8, 1.1, 0.3])
    np.testing.assert_array_equal(ideal.boxes, boxes)
    row = score("ideal", "ideal", ideal_ranking(dets, gts), gts, ds.classes)["overall"]
    assert (row["ap50_11pt"], row["ap50_all_point"], row["recall"]) == pytest.approx((5 / 11, 0.4, 0.4), abs=TOL)
    # A box of another class is never a candidate; an image without objects keeps its scores.
    other = {"000009": Detections(a[None], np.array([0.4]), np.array([3])),
             "000005": Detections(far[None], np.array([0.7]), np.zeros(1, dtype=np.int64))}
    out = ideal_ranking(other, gts)
    assert out["000009"].scores.tolist() == [0.4] and out["000005"].scores.tolist() == [0.7]


def test_main_writes_the_report(voc_sample, tmp_path) -> None:
    report = main(["--data", str(voc_sample), "--split", "test", "--heights", "0", "200", "--threads", "1",
                   "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "ap_ceiling.json").read_text())
    assert saved["rows"] == report["rows"] and saved["images"] == 7 and saved["input_size"] == 320
    rows = {r["name"]: r for r in saved["rows"]}
    assert list(rows) == ["oracle >= 0 px", "oracle >= 200 px", "baseline_person_320.pt",
                          "baseline_person_320.pt, ideal ranking"]
    # test persons at 320: 311.7 px (000001) and 142.0 px (000010)
    assert rows["oracle >= 0 px"]["overall"]["ap50_11pt"] == pytest.approx(1.0, abs=TOL)
    assert rows["oracle >= 200 px"]["overall"]["ap50_11pt"] == pytest.approx(6 / 11, abs=TOL)
    model, ideal = rows["baseline_person_320.pt"]["overall"], rows["baseline_person_320.pt, ideal ranking"]["overall"]
    assert ideal["recall"] == model["recall"]  # the same boxes
    assert ideal["ap50_11pt"] >= model["ap50_11pt"] - TOL
    assert ideal["ap50_11pt"] == pytest.approx(perfect_precision_ap11(ideal["recall"]), abs=TOL)
    text = (tmp_path / "ap_ceiling.md").read_text()
    assert "| oracle >= 200 px | 0.545 |" in text and "| *target* | 0.750 |" in text


def test_a_checkpoint_of_another_input_size_runs_at_its_own(voc_sample, tmp_path) -> None:
    save_checkpoint(tmp_path / "small.pt", random_detector(tiny_config(128))[0], ["person"])
    report = main(["--data", str(voc_sample), "--split", "test", "--heights", "0", "--threads", "1",
                   "--checkpoint", str(default_checkpoint()), str(tmp_path / "small.pt"), "--out", str(tmp_path)])
    rows = {r["name"]: r for r in report["rows"]}
    assert report["input_size"] == 320
    assert rows["small.pt @ 128 px"]["input_size"] == rows["small.pt @ 128 px, ideal ranking"]["input_size"] == 128
    assert rows["baseline_person_320.pt"]["input_size"] == 320
    text = (tmp_path / "ap_ceiling.md").read_text()
    assert "labelled `@ N px`" in text and "| small.pt @ 128 px |" in text


def test_settings_override_the_prediction(voc_sample, tmp_path) -> None:
    main(["--data", str(voc_sample), "--split", "test", "--heights", "0", "--threads", "1",
          "--set", "eval.max_detections=1", "--set", "eval.nms_iou=0.7", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "ap_ceiling.json").read_text())
    assert (saved["prediction"]["max_detections"], saved["prediction"]["nms_iou"]) == (1, 0.7)
    assert "max_detections 1" in (tmp_path / "ap_ceiling.md").read_text()


def test_bad_arguments_are_refused(voc_sample, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--data", str(voc_sample), "--heights", "-1", "--out", str(tmp_path)])
    assert "--heights" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", str(voc_sample), "--set", "nosuch.key=1", "--out", str(tmp_path)])
    assert "nosuch" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
