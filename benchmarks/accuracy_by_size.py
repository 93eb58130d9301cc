"""Where a detector's AP50 is lost: recall and AP per object size, per data source, on a test split and on the
training split (issue 2's "say what limits it").

For every checkpoint and split it runs the detector once (the evaluation's settings: score >= 0.01, NMS, at most
100 boxes) and scores the detections per size range of the objects, measured as their **height in network-input
pixels** (after the letterbox to the model's input size, e.g. 320). Objects outside a range are treated as
difficult (neither positives nor false positives), as COCO scores its area ranges. Per range: ground-truth count,
AP50 (VOC07 11-point), recall of all evaluated detections, and recall at the deploy score threshold
(``nms.score_threshold`` of the configuration, the threshold the demo draws with). The same figures on the
training split tell under-fitting (low there too) from a failure to generalise (high there, low on test). The
detections at the deploy threshold are counted by kind: true, duplicate, badly localised on a person (IoU 0.1–0.5),
background (IoU < 0.1), and how many of the background ones fall on images without a person at all; the badly
localised ones by how they miss: a box around several people, around one but too large, inside one (a part of
it), or shifted.

    python benchmarks/accuracy_by_size.py --data ../shared/data/pedestrians/VOCdevkit \\
        [--checkpoint A.pt B.pt] [--splits test trainval] [--edges 16 32 64] [--input-sizes 320 416]

``--input-sizes`` runs every checkpoint at each of these letterbox sizes instead of its own (the detector is fully
convolutional; a size must be a multiple of 32): whether a larger test-time input recovers the small people.
Results are then labelled ``name@size``; object heights stay measured at the checkpoint's own input size, so a size
range holds the same people at every evaluated size.

Writes ``accuracy_by_size.json``, ``.md`` and ``.png`` (with the environment) to ``--out``
(default ``benchmarks/results/``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import environment, load_baseline, save_plot  # noqa: E402
from compress.checkpoint import atomic_write_bytes, load_model  # noqa: E402
from compress.inference import predict_dataset, prediction_settings  # noqa: E402
from compress.voc import VOCDataset  # noqa: E402
from compress.voc_eval import (Detections, box_areas, evaluate_size_ranges, pairwise_intersection,  # noqa: E402
                               pairwise_iou, source_of)

KINDS = ("true", "duplicate", "localisation", "background", "ignored")
PLACEMENTS = ("several", "too large", "too small", "shifted")  # how a localisation detection misses
COVER = 0.7  # a box holds another when at least this share of the other's area lies inside it


def size_ranges(edges: Sequence[float]) -> List[Tuple[float, float]]:
    """Every object ``[0, inf)``; the bins ``[0, e1), [e1, e2), ..., [en, inf)``; last ``[e1, inf)``, every object
    but the smallest ones (the last bin already, with one edge)."""
    bounds = [0.0] + [float(e) for e in edges] + [math.inf]
    if not edges or any(b <= a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"size-range edges must be positive and increasing, got {list(edges)}")
    bins = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
    return [(0.0, math.inf)] + bins + ([(bounds[1], math.inf)] if len(edges) > 1 else [])


def range_name(lo: float, hi: float) -> str:
    if lo == 0.0 and math.isinf(hi):
        return "all"
    return f">={lo:g}" if math.isinf(hi) else f"{lo:g}-{hi:g}"


def input_heights(dataset: VOCDataset, input_size: int) -> Dict[str, np.ndarray]:
    """Height of every object in network-input pixels (the letterbox scales the longer image side to the input)."""
    out = {}
    for ann in dataset.annotations:
        boxes = ann.ground_truth().boxes
        out[ann.image_id] = (boxes[:, 3] - boxes[:, 1]) * (input_size / max(ann.width, ann.height))
    return out


def above(dets: Dict[str, Detections], threshold: float) -> Dict[str, Detections]:
    """The detections at score >= ``threshold``."""
    return {i: Detections(*(a[d.scores >= threshold] for a in d)) for i, d in dets.items()}


def _deploy_matches(dets: Dict[str, Detections], gts: Dict, threshold: float):
    """Every detection at score >= ``threshold`` as ``(kind, box, label, best, gt)``. In each image, by descending
    score, a detection takes the same-class object of largest IoU (VOC's rule): IoU >= 0.5 with an object not yet
    taken is ``true``, with one already taken ``duplicate``, with a difficult one ``ignored``; 0.1 <= IoU < 0.5 is
    ``localisation`` (a box on a person, badly placed or spanning several); below 0.1 ``background``. ``best`` is
    that object's index in ``gt`` (-1 when the image has none of the class)."""
    for image_id, det in dets.items():
        gt = gts[image_id]
        keep = np.flatnonzero(det.scores >= threshold)
        keep = keep[np.argsort(-det.scores[keep], kind="stable")]
        taken = np.zeros(len(gt.labels), dtype=bool)
        iou = pairwise_iou(det.boxes[keep], gt.boxes) if len(gt.labels) else np.zeros((keep.size, 0))
        iou[det.labels[keep][:, None] != np.asarray(gt.labels)[None, :]] = -1.0
        for k in range(keep.size):
            best = int(np.argmax(iou[k])) if iou.shape[1] else -1
            overlap = iou[k, best] if best >= 0 else 0.0
            if overlap >= 0.5:
                kind = "ignored" if gt.difficult[best] else ("duplicate" if taken[best] else "true")
                taken[best] = True
            else:
                kind = "localisation" if overlap >= 0.1 else "background"
            yield kind, det.boxes[keep[k]], int(det.labels[keep[k]]), best, gt


def _placement(box: np.ndarray, label: int, best: int, gt) -> str:
    """How one ``localisation`` detection misses its best object ``gt.boxes[best]`` (see ``placement_kinds``)."""
    inter = pairwise_intersection(box[None], gt.boxes)[0][0]
    held = (inter >= COVER * box_areas(gt.boxes)) & (np.asarray(gt.labels) == label)
    if np.count_nonzero(held) >= 2:
        return "several"
    if held[best]:
        return "too large"
    if inter[best] >= COVER * box_areas(box[None])[0]:
        return "too small"
    return "shifted"


def deploy_counts(dets: Dict[str, Detections], gts: Dict, threshold: float) -> Tuple[Dict[str, int], Dict[str, int]]:
    """``detection_kinds`` and ``placement_kinds`` from one pass of the matcher."""
    kinds, placements = dict.fromkeys(KINDS, 0), dict.fromkeys(PLACEMENTS, 0)
    for kind, box, label, best, gt in _deploy_matches(dets, gts, threshold):
        kinds[kind] += 1
        if kind == "localisation":
            placements[_placement(box, label, best, gt)] += 1
    return kinds, placements


def detection_kinds(dets: Dict[str, Detections], gts: Dict, threshold: float) -> Dict[str, int]:
    """What the detections at score >= ``threshold`` are: counts of ``_deploy_matches``' kinds."""
    return deploy_counts(dets, gts, threshold)[0]


def placement_kinds(dets: Dict[str, Detections], gts: Dict, threshold: float) -> Dict[str, int]:
    """How the ``localisation`` detections (0.1 <= IoU < 0.5 with their best object) miss, by what holds what
    (at least ``COVER`` of a box's area inside the other): a box holding two or more objects of its class is
    ``several`` (a group boxed as one); else one holding its best object is ``too large``; one inside that object
    ``too small`` (a part of it); the rest ``shifted``."""
    return deploy_counts(dets, gts, threshold)[1]


def on_negative_images(dets: Dict[str, Detections], gts: Dict, threshold: float) -> Dict[str, int]:
    """The images without any object of the evaluated classes (difficult ones count as objects) and the detections
    at score >= ``threshold`` on them: the part of ``detection_kinds``' background made where nobody is."""
    empty = [i for i, gt in gts.items() if len(gt.labels) == 0]
    return {"images": len(empty),
            "detections": int(sum(np.count_nonzero(dets[i].scores >= threshold) for i in empty if i in dets))}


def breakdown(dets: Dict[str, Detections], dataset: VOCDataset, input_size: int, edges: Sequence[float],
              deploy_threshold: float) -> Tuple[List[Dict], Dict[str, Dict[str, int]], Dict[str, Dict[str, int]],
                                                Dict[str, Dict[str, int]]]:
    """One row per (source, size range), ``all`` first, then each id prefix (see the module docstring); per source
    the detections at the deploy threshold counted by kind (``detection_kinds``), the badly placed ones of them by how
    they miss (``placement_kinds``), and those on images without an object of the evaluated classes
    (``on_negative_images``)."""
    gts = dataset.ground_truths()
    heights = input_heights(dataset, input_size)
    ranges = size_ranges(edges)
    cls = list(dataset.classes)
    groups = {"all": list(gts)}
    for image_id in gts:
        source = source_of(image_id)
        if source is not None:
            groups.setdefault(source, []).append(image_id)
    rows, kinds, placements, negatives = [], {}, {}, {}
    for source, ids in groups.items():
        g = {i: gts[i] for i in ids}
        h = {i: heights[i] for i in ids}
        d = {i: dets[i] for i in ids if i in dets}
        evaluated = evaluate_size_ranges(d, g, cls, h, ranges)
        deployed = evaluate_size_ranges(above(d, deploy_threshold), g, cls, h, ranges)
        kinds[source], placements[source] = deploy_counts(d, g, deploy_threshold)
        negatives[source] = on_negative_images(d, g, deploy_threshold)
        for (lo, hi), ev, dep in zip(ranges, evaluated, deployed):
            n = sum(ev["npos"].values())
            rows.append({"source": source, "range": range_name(lo, hi), "lo": lo, "hi": hi if math.isfinite(hi) else None,
                         "gt": n, "ap50": ev["map"] if n else None,  # figures over the classes with objects here
                         "recall": float(np.nanmean(list(ev["recall"].values()))) if n else None,
                         "recall_deploy": float(np.nanmean(list(dep["recall"].values()))) if n else None})
    return rows, kinds, placements, negatives


def _fmt(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.3f}"


def _counts_row(source: str, counts: Dict[str, int], keys: Sequence[str]) -> str:
    """A table row's first cells: the source, the total, then each count with its share of the total."""
    total = sum(counts.values())
    return f"| {source} | {total} | " + " | ".join(f"{counts[k]} ({counts[k] / max(total, 1):.0%})" for k in keys)


def markdown(results: List[Dict], edges: Sequence[float], deploy_threshold: float, env: Dict) -> str:
    names = [range_name(lo, hi) for lo, hi in size_ranges(edges)]
    lines = ["# Accuracy by object size", "",
             "Object height in network-input pixels; objects outside a range are ignored (COCO-style). Per range: "
             f"AP50 (VOC07 11-point) · recall of the evaluated detections (score ≥ 0.01) · recall at the deploy "
             f"threshold (score ≥ {deploy_threshold:g}) · ground-truth boxes. `all`: every object (the plain "
             f"evaluation); the last column: every object but the smallest range.", ""]
    for res in results:
        trained = res.get("trained_input_size", res["input_size"])
        size = f"input {res['input_size']}" + (f", trained at {trained}" if trained != res["input_size"] else "")
        lines += [f"## `{res['checkpoint']}` on `{res['split']}` ({res['images']} images, {size})", "",
                  "| source | " + " | ".join(n if n == "all" else f"{n} px" for n in names) + " |",
                  "|---|" + "---|" * len(names)]
        by_source: Dict[str, List[Dict]] = {}
        for r in res["rows"]:
            by_source.setdefault(r["source"], []).append(r)
        for source, rows in by_source.items():
            cells = [f"{_fmt(r['ap50'])} · {_fmt(r['recall'])} · {_fmt(r['recall_deploy'])} · {r['gt']}" for r in rows]
            lines.append(f"| {source} | " + " | ".join(cells) + " |")
        lines += ["", f"Detections at score ≥ {deploy_threshold:g}, by kind (share of all of them):", "",
                  "| source | detections | " + " | ".join(KINDS) + " | of the background: on images without "
                  "objects (images) |", "|---|---|" + "---|" * (len(KINDS) + 1)]
        negatives = res.get("deploy_on_negatives", {})  # reports written before it have no such counts
        for source, counts in res["deploy_detections"].items():
            neg = negatives.get(source)
            lines.append(_counts_row(source, counts, KINDS) + " | "
                         + (f"{neg['detections']} ({neg['images']})" if neg else "–") + " |")
        placements = res.get("deploy_placements")  # reports written before it have none
        if placements:
            lines += ["", f"The badly placed ones (localisation) by how they miss: a box holding ≥ 2 objects "
                      f"(≥ {COVER:.0%} of each inside it), holding its best-IoU object, inside that object, "
                      "or shifted:", "", "| source | localisation | " + " | ".join(PLACEMENTS) + " |",
                      "|---|---|" + "---|" * len(PLACEMENTS)]
            lines += [_counts_row(source, counts, PLACEMENTS) + " |" for source, counts in placements.items()]
        lines.append("")
    lines += ["Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    return "\n".join(lines)


MIN_PLOTTED_BOXES = 10  # a recall over fewer boxes is left off the plot (it stays in the tables)


def plot(path: Path, results: List[Dict], edges: Sequence[float]) -> None:
    """Recall per size bin, a colour per source. Left: the first checkpoint on every split (solid: the first split,
    dashed: the next). Right, with several checkpoints: each of them on the first split."""
    names = [range_name(lo, hi) for lo, hi in size_ranges(edges)][1:len(edges) + 2]
    checkpoints = list(dict.fromkeys(r["checkpoint"] for r in results))
    panels = [(f"{checkpoints[0]}: " + " vs ".join(r["split"] for r in results if r["checkpoint"] == checkpoints[0]),
               [(r, r["split"]) for r in results if r["checkpoint"] == checkpoints[0]])]
    if len(checkpoints) > 1:
        panels.append((f"checkpoints on {results[0]['split']}",
                       [(r, r["checkpoint"]) for r in results if r["split"] == results[0]["split"]]))
    sources = dict.fromkeys(r["source"] for res in results for r in res["rows"])
    colours = {source: f"C{i}" for i, source in enumerate(sources)}
    entries = len(colours) + max(len(series) for _, series in panels)

    def draw(axes):
        from matplotlib.lines import Line2D

        for ax, (title, series) in zip(axes if len(panels) > 1 else [axes], panels):
            handles = []
            for k, (res, label) in enumerate(series):
                style = {"marker": "osD^vP"[k % 6], "linestyle": ("-", "--", ":", "-.")[k % 4]}  # unique for 12
                for source in dict.fromkeys(r["source"] for r in res["rows"]):
                    rows = [r for r in res["rows"] if r["source"] == source][1:1 + len(names)]
                    y = [np.nan if r["recall"] is None or r["gt"] < MIN_PLOTTED_BOXES else r["recall"] for r in rows]
                    ax.plot(range(len(names)), y, color=colours[source], **style)
                handles.append(Line2D([], [], color="0.35", label=label, **style))
            # the legend names each colour (source) and each style (series) of this panel once, below the axes
            shown = dict.fromkeys(r["source"] for res, _ in series for r in res["rows"])
            handles = [Line2D([], [], color=colours[s], linewidth=4, label=s) for s in shown] + handles
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels([f"{n} px" for n in names])
            ax.set_xlabel("object height in network-input pixels")
            ax.set_ylabel("recall (IoU 0.5, score >= 0.01)")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.set_title(f"{title}\n(points over fewer than {MIN_PLOTTED_BOXES} boxes left off)", fontsize=9)
            ax.legend(handles=handles, fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14))

    save_plot(path, draw, figsize=(7 * len(panels), 5 + 0.1 * entries), ncols=len(panels))


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="VOCdevkit root (default: the configured one)")
    ap.add_argument("--checkpoint", nargs="*", default=None, help="checkpoints (default: the shipped baseline)")
    ap.add_argument("--splits", nargs="+", default=["test", "trainval"])
    ap.add_argument("--edges", nargs="+", type=float, default=[16.0, 32.0, 64.0],
                    help="size-range edges in network-input pixels of object height")
    ap.add_argument("--input-sizes", nargs="+", type=int, default=None,
                    help="evaluate at these input sizes (multiples of 32) instead of each checkpoint's own")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    try:
        ranges = size_ranges(args.edges)  # validated before any work
    except ValueError as exc:
        ap.error(str(exc))
    bad_sizes = [s for s in args.input_sizes or [] if s <= 0 or s % 32]
    if bad_sizes:
        ap.error(f"--input-sizes must be positive multiples of 32 (the coarsest stride), got {bad_sizes}")
    checkpoints = args.checkpoint or [None]
    cfg, first_path, first_model, _, data_root = load_baseline(checkpoints[0], args.data, args.threads)
    deploy_threshold = float(cfg["nms"]["score_threshold"])
    results = []
    t0 = time.time()
    paths = [first_path] + [Path(ck) for ck in checkpoints[1:]]
    names = [p.name for p in paths]
    if len(set(names)) < len(names):  # runs/a/final.pt, runs/b/final.pt: label by path
        names = [str(p) for p in paths]
    datasets = {split: VOCDataset(data_root, split, classes=cfg["data"]["classes"]) for split in args.splits}
    for i, (path, name) in enumerate(zip(paths, names)):
        model = first_model if i == 0 else load_model(path)[0]
        trained = int(model.config.input_size)
        for size in args.input_sizes or [trained]:
            label = f"{name}@{size}" if args.input_sizes else name
            for split, ds in datasets.items():
                dets, timing = predict_dataset(model, ds, size, progress=True, **prediction_settings(cfg["eval"]))
                # binned by height at the trained size: the same people in a row whatever size is evaluated
                rows, kinds, placements, negatives = breakdown(dets, ds, trained, args.edges, deploy_threshold)
                results.append({"checkpoint": label, "split": split, "images": len(ds), "input_size": size,
                                "trained_input_size": trained, "rows": rows, "deploy_detections": kinds,
                                "deploy_placements": placements, "deploy_on_negatives": negatives})
                print(f"{label} {split} ({timing['seconds']:.0f} s): " + "; ".join(
                    f"{r['source']} {r['range']} AP50 {_fmt(r['ap50'])} recall {_fmt(r['recall'])}"
                    for r in rows if r["range"] in ("all", range_name(*ranges[-1]))), flush=True)
    env = environment(args.threads)
    report = {"edges": list(args.edges), "deploy_threshold": deploy_threshold, "results": results,
              "seconds": time.time() - t0, "environment": env}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "accuracy_by_size.json", json.dumps(report, indent=1).encode())
    atomic_write_bytes(out / "accuracy_by_size.md", markdown(results, args.edges, deploy_threshold, env).encode())
    plot(out / "accuracy_by_size.png", results, args.edges)
    return report


if __name__ == "__main__":
    main()
