"""How many grid points learn each ground-truth box under the two target assignments (``train.assigner``), per data
source: FCOS's fixed rule against SimOTA's choice by a trained checkpoint's own predictions.

For every image of the split (letterboxed to the checkpoint's input size, no augmentation) it runs the checkpoint
once, assigns the image's boxes with both rules (``compress.loss.assign`` / ``dynamic_assign``, the functions the
training loss calls) and counts the positive points of every box. Per source (the image id's prefix): boxes, mean
positives per box and the share of boxes left with none, for each rule. FCOS's counts do not depend on the model;
SimOTA's are those the checkpoint would be trained with at that point.

    python benchmarks/assigner_positives.py --data ../shared/data/pedestrians/VOCdevkit --split trainval \\
        --checkpoint A.pt [B.pt ...] --out DIR

Writes ``assigner_positives.json``, ``.md`` and ``.png`` (with the environment) to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import environment, load_baseline, save_plot  # noqa: E402
from compress.checkpoint import atomic_write_bytes, load_model  # noqa: E402
from compress.voc import VOCDataset, load_image  # noqa: E402
from compress.voc_eval import source_of  # noqa: E402


def positives_per_box(model, dataset: VOCDataset) -> Dict[str, Dict[str, List[int]]]:
    """Per source (``"all"`` for ids without one): the positive count of every box under each rule."""
    import torch

    from compress.augment import letterbox, to_tensor_layout, transform_boxes
    from compress.loss import DetectionLoss, assign, dynamic_assign

    size = int(model.config.input_size)
    loss = DetectionLoss(model)
    model.eval()
    counts: Dict[str, Dict[str, List[int]]] = {}
    for ann in dataset.annotations:
        if len(ann.boxes) == 0:
            continue
        image, (scale, dx, dy) = letterbox(load_image(ann.image_path), size)
        boxes = torch.from_numpy(transform_boxes(ann.boxes, scale, dx, dy))
        labels = torch.from_numpy(ann.labels.astype(np.int64))
        with torch.no_grad():
            logits, log_dist, sizes = model.flatten(model.raw_outputs(torch.from_numpy(to_tensor_layout(image))[None]))
            pred = model.decode(logits, log_dist, sizes)[0][0]
        centres, strides, levels = loss._points(sizes, logits.device)
        m = len(boxes)
        fixed = assign(centres, strides, levels, boxes, loss.ranges, loss.radius)
        dynamic = dynamic_assign(centres, strides, boxes, labels, pred, logits[0], loss.radius)
        per = counts.setdefault(source_of(ann.image_id) or "all", {"fcos": [], "simota": []})
        per["fcos"] += torch.bincount(fixed[fixed >= 0], minlength=m).tolist()
        per["simota"] += torch.bincount(dynamic[dynamic >= 0], minlength=m).tolist()
    return counts


def summarise(counts: Dict[str, Dict[str, List[int]]]) -> List[Dict]:
    rows = []
    for source in sorted(counts):
        row: Dict = {"source": source, "boxes": len(counts[source]["fcos"])}
        for rule, values in counts[source].items():
            arr = np.asarray(values, dtype=np.float64)
            row[rule] = {"mean": float(arr.mean()), "none": float(np.mean(arr == 0)), "max": int(arr.max())}
        row["ratio"] = row["simota"]["mean"] / row["fcos"]["mean"] if row["fcos"]["mean"] else None
        rows.append(row)
    return rows


def markdown(results: List[Dict], split: str, env: Dict) -> str:
    lines = ["# Positive points per ground-truth box: FCOS rule against SimOTA", "",
             f"Split `{split}`, unaugmented images letterboxed to each checkpoint's input size. SimOTA's counts are "
             "from each checkpoint's own predictions; FCOS's do not depend on the model.", ""]
    for res in results:
        lines += [f"## `{res['checkpoint']}`", "",
                  "| source | boxes | FCOS positives / box | FCOS none | SimOTA positives / box | SimOTA none "
                  "| SimOTA / FCOS |",
                  "|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            ratio = "–" if r["ratio"] is None else f"{r['ratio']:.2f}"
            lines.append(f"| {r['source']} | {r['boxes']} | {r['fcos']['mean']:.2f} | {r['fcos']['none']:.3f} | "
                         f"{r['simota']['mean']:.2f} | {r['simota']['none']:.3f} | {ratio} |")
        lines.append("")
    lines.append("Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    return "\n".join(lines) + "\n"


def plot(path: Path, results: List[Dict]) -> None:
    def draw(ax):
        sources = sorted({r["source"] for res in results for r in res["rows"]})
        bars = [("FCOS (any model)", [next((r["fcos"]["mean"] for r in results[0]["rows"] if r["source"] == s), 0)
                                      for s in sources])]
        bars += [(f"SimOTA, {res['checkpoint']}", [next((r["simota"]["mean"] for r in res["rows"]
                                                          if r["source"] == s), 0) for s in sources])
                 for res in results]
        width = 0.8 / len(bars)
        for i, (label, values) in enumerate(bars):
            ax.bar(np.arange(len(sources)) + (i - (len(bars) - 1) / 2) * width, values, width, label=label)
        ax.set_xticks(np.arange(len(sources)), sources)
        ax.set_ylabel("positive points per ground-truth box (mean)")
        ax.set_title("Which points learn each box: FCOS rule against SimOTA")
        ax.legend(fontsize=8)

    save_plot(path, draw)


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="VOCdevkit root (default: the configured one)")
    ap.add_argument("--checkpoint", nargs="*", default=None, help="checkpoints (default: the shipped baseline)")
    ap.add_argument("--split", default="trainval")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "assigner_positives"))
    args = ap.parse_args(argv)
    checkpoints = args.checkpoint or [None]
    cfg, first_path, first_model, _, data_root = load_baseline(checkpoints[0], args.data, args.threads)
    dataset = VOCDataset(data_root, args.split, classes=cfg["data"]["classes"])
    t0 = time.time()
    results = []
    for i, path in enumerate([first_path] + [Path(ck) for ck in checkpoints[1:]]):
        model = first_model if i == 0 else load_model(path)[0]
        rows = summarise(positives_per_box(model, dataset))
        results.append({"checkpoint": path.name, "input_size": int(model.config.input_size), "rows": rows})
        print(f"{path.name}: " + "; ".join(
            f"{r['source']} FCOS {r['fcos']['mean']:.2f} SimOTA {r['simota']['mean']:.2f}" for r in rows), flush=True)
    env = environment(args.threads)
    report = {"split": args.split, "images": len(dataset), "results": results, "seconds": time.time() - t0,
              "environment": env}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "assigner_positives.json", json.dumps(report, indent=1).encode())
    atomic_write_bytes(out / "assigner_positives.md", markdown(results, args.split, env).encode())
    plot(out / "assigner_positives.png", results)
    return report


if __name__ == "__main__":
    main()
