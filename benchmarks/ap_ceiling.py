"""How high can a detector's AP50 go on a split? Ceilings that bound issue 2's 0.75 target: from the ground truth
alone, and from a checkpoint's own boxes.

VOC07 11-point AP is the mean, over recall levels t = 0, 0.1, ..., 1, of the best precision at recall >= t. A ranked
list that reaches recall R at perfect precision scores (floor(10 R) + 1) / 11 and no more (all-point AP: R). So a
detector that misses more than a tenth of the people cannot pass 10/11 = 0.909, more than a fifth not 9/11 = 0.818,
more than 30% not 8/11 = 0.727, however well it ranks what it finds.

Rows, each scored overall (every image of the split pooled in one ranking, as the evaluation does) and per source:

- ``oracle >= h px``: every annotated object of height >= h in network-input pixels (letterboxed to the first
  checkpoint's input size, as ``accuracy_by_size.py`` measures it) found exactly, at score 1, and nothing else:
  the ceiling of a detector blind to everything smaller than h.
- ``<checkpoint>``: its evaluated detections (the evaluation's settings: score >= 0.01, NMS, at most 100 per
  image): the plain evaluation.
- ``<checkpoint>, ideal ranking``: the same boxes re-scored so that every box that can be a true positive under the
  devkit's matching (IoU >= 0.5 with the object it overlaps most, one box per object) ranks above every other box:
  what a perfect scorer on top of these boxes would reach. The gap below it is lost to ranking (false positives
  scored above true ones); the gap above it to people without a good box at all (missed or badly placed).

    python benchmarks/ap_ceiling.py --data ../shared/data/pedestrians/VOCdevkit [--checkpoint A.pt B.pt] \\
        [--split test] [--heights 16 32 64] [--set eval.nms_iou=0.7 ...] [--out benchmarks/results/ap_ceiling]

``--set`` overrides the configuration as the CLI's does, e.g. the evaluation's NMS threshold or number of boxes per
image: how much of the boxes' recall the post-processing keeps.

Writes ``ap_ceiling.json``, ``.md`` and ``.png`` (with the environment) to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.accuracy_by_size import input_heights  # noqa: E402
from benchmarks.baseline_recipes import REFERENCE, TARGET  # noqa: E402
from benchmarks.common import environment, load_baseline, save_plot  # noqa: E402
from compress.checkpoint import atomic_write_bytes, load_model  # noqa: E402
from compress.inference import predict_dataset, prediction_settings  # noqa: E402
from compress.voc import VOCDataset  # noqa: E402
from compress.voc_eval import (METRIC_ALL_POINT, METRIC_VOC07, Detections, GroundTruth,  # noqa: E402
                               evaluate_all, pairwise_iou)
from jetson_compress.config import ConfigError  # noqa: E402


def perfect_precision_ap11(recall: float) -> float:
    """The VOC07 11-point AP of a ranked list that reaches ``recall`` with every detection true: the share of the
    eleven recall levels 0, 0.1, ..., 1 it reaches (0 for a list without a true positive)."""
    if not recall > 0:
        return 0.0
    return sum(1 for k in range(11) if recall >= k / 10.0) / 11.0


def oracle(ground_truths: Mapping[str, GroundTruth], heights: Mapping[str, np.ndarray],
           min_height: float) -> Dict[str, Detections]:
    """Every non-difficult object of height >= ``min_height`` as a detection of its own box and class, score 1."""
    out = {}
    for image_id, gt in ground_truths.items():
        keep = ~np.asarray(gt.difficult, dtype=bool) & (np.asarray(heights[image_id]) >= min_height)
        boxes = np.asarray(gt.boxes, dtype=np.float64).reshape(-1, 4)[keep]
        out[image_id] = Detections(boxes, np.ones(len(boxes)), np.asarray(gt.labels, dtype=np.int64)[keep])
    return out


def ideal_ranking(detections: Mapping[str, Detections], ground_truths: Mapping[str, GroundTruth],
                  iou_threshold: float = 0.5) -> Dict[str, Detections]:
    """The same boxes with every box that can be a true positive ranked first.

    Under the devkit's matching a detection is tried against the same-class object it overlaps most (the first on
    equal IoU); it can be a true positive only if that IoU is >= ``iou_threshold`` and the object is not difficult,
    and only one detection per object can be. Per object, the candidate of largest IoU (the higher-scored on a tie)
    gets ``1 + score``; every other detection keeps its score (<= 1), so the chosen ones are matched first, each to
    its own object, and the list reaches the most true positives these boxes allow before its first false one.
    """
    out = {}
    for image_id, det in detections.items():
        gt = ground_truths[image_id]
        scores = np.asarray(det.scores, dtype=np.float64).copy()
        gt_labels = np.asarray(gt.labels).reshape(-1)
        if len(scores) and gt_labels.size:
            iou = pairwise_iou(np.asarray(det.boxes, dtype=np.float64), np.asarray(gt.boxes, dtype=np.float64))
            iou[np.asarray(det.labels)[:, None] != gt_labels[None, :]] = -1.0
            best = np.argmax(iou, axis=1)
            overlap = iou[np.arange(len(scores)), best]
            difficult = np.asarray(gt.difficult, dtype=bool)
            chosen = {}
            for k in np.flatnonzero(overlap >= iou_threshold):
                g = int(best[k])
                if difficult[g]:
                    continue
                c = chosen.get(g)
                if c is None or (overlap[k], det.scores[k]) > (overlap[c], det.scores[c]):
                    chosen[g] = k
            for k in chosen.values():
                scores[k] = 1.0 + scores[k]
        out[image_id] = Detections(det.boxes, scores, det.labels)
    return out


def score(name: str, kind: str, detections: Mapping[str, Detections], ground_truths: Mapping[str, GroundTruth],
          class_names: Sequence[str]) -> Dict:
    """One row: AP50 in both interpolations and recall, overall and per source."""
    ev = evaluate_all(detections, ground_truths, class_names)

    def figures(res: Mapping) -> Dict[str, float]:
        return {"ap50_11pt": res[METRIC_VOC07]["map"], "ap50_all_point": res[METRIC_ALL_POINT]["map"],
                "recall": float(np.nanmean(list(res[METRIC_VOC07]["recall"].values()))),
                "positives": int(sum(res[METRIC_VOC07]["npos"].values()))}

    return {"name": name, "kind": kind, "overall": figures(ev),
            "per_source": {s: figures(r) for s, r in ev["per_source"].items()}}


def _fmt(x: Optional[float]) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def markdown(report: Dict) -> str:
    rows, env = report["rows"], report["environment"]
    sources = sorted({s for r in rows for s in r["per_source"]})
    mixed = any(r.get("input_size", report["input_size"]) != report["input_size"] for r in rows)
    lines = [f"# AP50 ceilings on `{report['split']}` ({report['images']} images, input {report['input_size']})", "",
             ("Heights at the first checkpoint's input size; a checkpoint of another input size runs at its own and is"
              " labelled `@ N px`. " if mixed else "") +
             "Overall: every image pooled in one ranking, as the evaluation scores it. AP50 VOC07 11-point · all-point"
             " · recall of the listed boxes; per source: 11-point AP50 · recall. `oracle >= h px`: every person of"
             " input height >= h found exactly, nothing else. `ideal ranking`: the checkpoint's own boxes with every"
             " box that can be a true positive ranked first. See `benchmarks/ap_ceiling.py`. The checkpoints'"
             " detections: " + ", ".join(f"{k} {v}" for k, v in report["prediction"].items() if k != "batch_size") + ".",
             "",
             "| row | overall 11-pt | all-point | recall | " + " | ".join(sources) + " |",
             "|---|---|---|---|" + "---|" * len(sources)]
    for r in rows:
        o = r["overall"]
        cells = [f"{_fmt(r['per_source'][s]['ap50_11pt'])} · {_fmt(r['per_source'][s]['recall'])}"
                 if s in r["per_source"] else "–" for s in sources]
        lines.append(f"| {r['name']} | {_fmt(o['ap50_11pt'])} | {_fmt(o['ap50_all_point'])} | {_fmt(o['recall'])} | "
                     + " | ".join(cells) + " |")
    ref = " | ".join(f"{REFERENCE[s]:.3f}" if s in REFERENCE else "–" for s in sources)
    lines += [f"| *SSDLite-MobileNetV2 (COCO), quoted in issue #2* | {REFERENCE['overall']:.3f} | | | {ref} |",
              f"| *target* | {TARGET:.3f} | | | " + " | ".join("" for _ in sources) + " |", "",
              f"Perfect precision up to recall R scores (floor(10 R) + 1) / 11 in the 11-point metric: "
              f"recall >= 0.9 allows up to {perfect_precision_ap11(0.9):.3f}, >= 0.8 up to "
              f"{perfect_precision_ap11(0.8):.3f}, >= 0.7 up to {perfect_precision_ap11(0.7):.3f}.", "",
              f"Environment: {env['cpu']} ({env['cpus']} CPUs), {env['threads']} threads, torch {env['torch']}, "
              f"{env['platform']}, {env['date']}; {report['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def plot(path: Path, report: Dict) -> None:
    rows = report["rows"]

    def draw(ax):
        names = [r["name"] for r in rows][::-1]
        values = [r["overall"]["ap50_11pt"] for r in rows][::-1]
        colours = {"oracle": "#9e9e9e", "model": "#1f77b4", "ideal": "#aec7e8"}
        ax.barh(range(len(rows)), values, color=[colours[r["kind"]] for r in rows][::-1])
        for y, v in enumerate(values):
            ax.text(v + 0.005, y, f"{v:.3f}", va="center", fontsize=8,
                    bbox=dict(facecolor="white", edgecolor="none", pad=0.5))
        ax.axvline(TARGET, color="#d62728", linestyle="--", label=f"target {TARGET:.2f}")
        ax.axvline(REFERENCE["overall"], color="#2ca02c", linestyle=":",
                   label=f"SSDLite (COCO) {REFERENCE['overall']:.3f}")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(names, fontsize=8)
        ax.set_xlim(0, 1.08)
        ax.set_xlabel(f"AP50, VOC07 11-point, {report['split']} split pooled")
        ax.set_title("How high the AP50 can go: oracles, and each checkpoint's own boxes", fontsize=10)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)

    save_plot(path, draw, figsize=(8, 0.45 * len(rows) + 2.0))


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="VOCdevkit root (default: the configured one)")
    ap.add_argument("--checkpoint", nargs="*", default=None, help="checkpoints (default: the shipped baseline)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--heights", nargs="+", type=float, default=[16.0, 32.0, 64.0],
                    help="oracle rows: objects at least this tall in network-input pixels (0 adds the perfect one)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="configuration override, repeatable (e.g. eval.nms_iou=0.7)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ap_ceiling"))
    args = ap.parse_args(argv)
    if any(h < 0 or not math.isfinite(h) for h in args.heights):
        ap.error(f"--heights must be finite and >= 0, got {args.heights}")
    checkpoints = args.checkpoint or [None]
    t0 = time.time()
    try:
        cfg, first_path, first_model, _, data_root = load_baseline(checkpoints[0], args.data, args.threads, args.sets)
    except ConfigError as exc:
        ap.error(str(exc))
    settings = prediction_settings(cfg["eval"])
    ds = VOCDataset(data_root, args.split, classes=cfg["data"]["classes"])
    gts, classes = ds.ground_truths(), list(ds.classes)
    size = int(first_model.config.input_size)
    heights = input_heights(ds, size)
    rows = [score(f"oracle >= {h:g} px", "oracle", oracle(gts, heights, h), gts, classes)
            for h in sorted(args.heights)]
    paths = [first_path] + [Path(ck) for ck in checkpoints[1:]]
    names = [p.name for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    for i, (path, name) in enumerate(zip(paths, names)):
        model = first_model if i == 0 else load_model(path)[0]
        msize = int(model.config.input_size)
        dets, timing = predict_dataset(model, ds, msize, progress=True, **settings)
        name = name if msize == size else f"{name} @ {msize} px"
        rows.append({**score(name, "model", dets, gts, classes), "input_size": msize})
        rows.append({**score(f"{name}, ideal ranking", "ideal", ideal_ranking(dets, gts), gts, classes),
                     "input_size": msize})
        print(f"{name} ({timing['seconds']:.0f} s): AP50 {rows[-2]['overall']['ap50_11pt']:.4f}, ideal ranking "
              f"{rows[-1]['overall']['ap50_11pt']:.4f}, recall {rows[-1]['overall']['recall']:.4f}", flush=True)
    report = {"split": args.split, "images": len(ds), "input_size": size, "heights": sorted(args.heights),
              "prediction": settings, "target": TARGET, "reference": REFERENCE, "rows": rows, "seconds": time.time() - t0,
              "environment": environment(args.threads)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "ap_ceiling.json", json.dumps(report, indent=1).encode())
    atomic_write_bytes(out / "ap_ceiling.md", markdown(report).encode())
    plot(out / "ap_ceiling.png", report)
    return report


if __name__ == "__main__":
    main()
