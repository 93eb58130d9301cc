"""Does the baseline's accuracy follow its training data? A learning curve for one source of the training split.

Issue #2 asks, where the 0.75 AP50 target is not reached, whether data, CPU time or the architecture limits it. This
script measures the data side directly: train the same recipe with fewer training images of one source (the others
whole) and see how that source's test AP moves.

``split`` writes VOCdevkit views that keep a source's first N images of one random order (nested: the 32 kept are
among the 64 kept), every other image of the split, and nothing else changed: ``Annotations`` and ``JPEGImages`` are
symbolic links to the original folders, and every list of ``ImageSets/Main`` (the split, its class and per-source
lists) is the original's without the left-out ids, in the original order. The left-out images are listed in
``<split>_<source>_heldout.txt`` of the view, to evaluate on images of the same source that training did not see.
Each view has a ``subset.json`` with the images and boxes kept per source.

    python benchmarks/data_scaling.py split --data ../shared/data/pedestrians/VOCdevkit --source coco \\
        --keep 32 64 --seed 0 --out runs/data_scaling
    # then, per view: jetson-compress train --data runs/data_scaling/coco32/VOCdevkit --out runs/coco32 ...

``report`` takes, for each trained checkpoint, the number of the source's training images it saw and the
``accuracy_by_size.json`` report that evaluated it (``--point N REPORT CHECKPOINT``, the checkpoint as the report
names it), and tabulates and plots test AP50 per source against N (log scale), with the mean per N and the change
per doubling of N from a least-squares line through every run (in AP50 points, where two or more N are given) and
between consecutive N's means (whether the curve bends, where three or more are given). It measures nothing itself:
the figures are those of the reports. (The full command behind ``benchmarks/results/baseline_data_scaling/``, every
run at 32 / 64 / 128, is in that folder's README.)

    python benchmarks/data_scaling.py report --source coco \\
        --point 128 benchmarks/results/baseline_freeze/accuracy_by_size.json frozen14_seed0.pt \\
        --point 32 benchmarks/results/baseline_data_scaling/accuracy_by_size.json coco32_frozen14_seed0.pt \\
        --out benchmarks/results/baseline_data_scaling
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.baseline_recipes import REFERENCE, SOURCES, _fmt, collect  # noqa: E402
from benchmarks.common import save_plot  # noqa: E402
from compress.checkpoint import atomic_write_bytes  # noqa: E402
from compress.voc import DataError, VOCDataset, read_split, resolve_year_dir  # noqa: E402
from compress.voc_eval import source_of  # noqa: E402


def source_counts(root: Path, split: str, classes: Sequence[str] = ("person",)) -> Dict[str, Dict[str, int]]:
    """Images and boxes (all, difficult included) per source of one split."""
    counts: Dict[str, Dict[str, int]] = {}
    for ann in VOCDataset(root, split, classes=classes, check_images=False):
        c = counts.setdefault(source_of(ann.image_id) or "-", {"images": 0, "boxes": 0})
        c["images"] += 1
        c["boxes"] += len(ann.boxes)
    return dict(sorted(counts.items()))


def write_subsets(root: Path, split: str, source: str, keep: Sequence[int], seed: int, out: Path) -> List[Path]:
    """One VOCdevkit view per N in ``keep`` (see the module docstring); returns their roots."""
    year_dir = resolve_year_dir(root)
    ids = read_split(year_dir, split)
    ours = [i for i in ids if source_of(i) == source]
    if not ours:
        found = sorted({source_of(i) or "-" for i in ids})
        raise DataError(year_dir / "ImageSets" / "Main" / f"{split}.txt",
                        f"no image of source {source!r} (sources: {', '.join(found)})")
    too_many = [n for n in keep if not 0 <= n <= len(ours)]
    if too_many:
        raise ValueError(f"--keep {too_many}: source {source!r} has {len(ours)} images in split {split!r}")
    order = sorted(ours)
    random.Random(seed).shuffle(order)
    roots = []
    for n in keep:
        kept = set(order[:n])
        view = out / f"{source}{n}" / "VOCdevkit"
        vyear = view / year_dir.name
        if vyear.exists():  # a view this script wrote earlier is replaced; anything else is left alone
            if not (view.parent / "subset.json").is_file():
                raise FileExistsError(f"{vyear} exists and is not a view written by this script; choose another --out")
            shutil.rmtree(vyear)
        (vyear / "ImageSets" / "Main").mkdir(parents=True)
        for sub in ("Annotations", "JPEGImages"):
            (vyear / sub).symlink_to((year_dir / sub).resolve(), target_is_directory=True)
        dropped = set(ours) - kept
        # every list of the original (the split, its class and per-source lists) without the dropped ids
        for f in sorted((year_dir / "ImageSets" / "Main").glob("*.txt")):
            lines = f.read_text().splitlines(keepends=True)
            kept_lines = [ln for ln in lines if not ln.split() or ln.split()[0] not in dropped]
            atomic_write_bytes(vyear / "ImageSets" / "Main" / f.name, "".join(kept_lines).encode())
        # the source's images this view left out, as a split of their own: seen against unseen images of one source
        heldout = [i for i in ids if i in dropped]
        if heldout:
            atomic_write_bytes(vyear / "ImageSets" / "Main" / f"{split}_{source}_heldout.txt",
                               ("\n".join(heldout) + "\n").encode())
        info = {"original": str(root), "split": split, "source": source, "keep": n, "seed": seed,
                "counts": source_counts(view, split)}
        atomic_write_bytes(view.parent / "subset.json", (json.dumps(info, indent=1) + "\n").encode())
        roots.append(view)
    return roots


def gather(points: Sequence[Sequence[str]], split: str = "test") -> List[Dict]:
    """``[(N, report, checkpoint), ...]`` -> one row per run: ``train_images``, ``checkpoint``, ``report``, ``ap50``
    per source. Raises ValueError naming the report when it has no such checkpoint or N is not a count."""
    rows = []
    entries: Dict[str, List[Dict]] = {}  # per report file, read once
    for n, report, name in points:
        try:
            count = int(n)
            if count < 1:  # the curve is on log2(N)
                raise ValueError
        except ValueError:
            raise ValueError(f"{n!r} is not a positive number of training images (--point N REPORT CHECKPOINT)") \
                from None
        if report not in entries:
            entries[report] = collect([Path(report)], split)
        entry = next((e for e in entries[report] if name == e["name"] or name in e["aliases"]), None)
        if entry is None:
            raise ValueError(f"{report}: no checkpoint {name!r} evaluated on the {split!r} split")
        rows.append({"train_images": count, "checkpoint": name, "report": str(report), "ap50": entry["ap50"]})
    return sorted(rows, key=lambda r: (r["train_images"], r["checkpoint"]))


def per_doubling(rows: List[Dict], source: str) -> Optional[float]:
    """Slope of the least-squares line of AP50 (points, x100) against log2(N) through every run; None where fewer
    than two distinct N carry a figure."""
    pts = [(math.log2(r["train_images"]), 100.0 * r["ap50"][source]) for r in rows if r["ap50"][source] is not None]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def summarise(rows: List[Dict]) -> Dict:
    by_n: Dict[int, List[Dict]] = {}
    for r in rows:
        by_n.setdefault(r["train_images"], []).append(r)
    means = []
    for n, rs in sorted(by_n.items()):
        mean, spread = {}, {}
        for s in SOURCES:
            vals = [r["ap50"][s] for r in rs if r["ap50"][s] is not None]
            mean[s] = sum(vals) / len(vals) if vals else None
            spread[s] = max(vals) - min(vals) if len(vals) > 1 else None
        means.append({"train_images": n, "runs": len(rs), "ap50_mean": mean, "ap50_spread": spread})
    return {"per_n": means, "points_per_doubling": {s: per_doubling(rows, s) for s in SOURCES},
            "steps": steps(means)}


def steps(means: List[Dict]) -> List[Dict]:
    """Change per doubling between consecutive counts' means (AP50 points): whether the curve bends (a line through
    every run cannot tell a flattening curve from a straight one)."""
    out = []
    for a, b in zip(means, means[1:]):
        doublings = math.log2(b["train_images"] / a["train_images"])
        out.append({"from": a["train_images"], "to": b["train_images"], "points_per_doubling": {
            s: None if a["ap50_mean"][s] is None or b["ap50_mean"][s] is None
            else 100.0 * (b["ap50_mean"][s] - a["ap50_mean"][s]) / doublings for s in SOURCES}})
    return out


def markdown(source: str, rows: List[Dict], summary: Dict) -> str:
    lines = [f"# Test AP50 against the number of `{source}` training images", "",
             "AP50 (VOC07 11-point) on the test split, every object; the other sources' training images unchanged. "
             "Figures from the reports named; the recipes and commands are in the README beside them.", "",
             f"| {source} training images | checkpoint | " + " | ".join(SOURCES) + " | report |",
             "|---|---|" + "---|" * (len(SOURCES) + 1)]
    for r in rows:
        lines.append(f"| {r['train_images']} | `{r['checkpoint']}` | "
                     + " | ".join(_fmt(r["ap50"][s]) for s in SOURCES) + f" | `{r['report']}` |")
    lines += ["", f"| {source} training images | runs | " + " | ".join(f"{s} mean (spread)" for s in SOURCES) + " |",
              "|---|---|" + "---|" * len(SOURCES)]
    for m in summary["per_n"]:
        cells = [_fmt(m["ap50_mean"][s]) + ("" if m["ap50_spread"][s] is None else f" ({m['ap50_spread'][s]:.4f})")
                 for s in SOURCES]
        lines.append(f"| {m['train_images']} | {m['runs']} | " + " | ".join(cells) + " |")
    lines.append("| *SSDLite reference (COCO-trained)* | | " + " | ".join(f"{REFERENCE[s]:.3f}" for s in SOURCES)
                 + " |")
    slope = summary["points_per_doubling"]
    lines += ["", "Change per doubling of the " + source + " training images (least-squares line through every run, "
              "AP50 points): " + ", ".join(f"{s} {_fmt(slope[s], 2)}" for s in SOURCES) + "."]
    if len(summary["steps"]) > 1:
        lines += ["", "Between consecutive counts (means, AP50 points per doubling):", ""]
        lines += [f"- {st['from']} → {st['to']}: " + ", ".join(f"{s} {_fmt(st['points_per_doubling'][s], 2)}"
                                                           for s in SOURCES) for st in summary["steps"]]
    return "\n".join(lines) + "\n"


def plot(path: Path, source: str, rows: List[Dict], summary: Dict) -> bool:
    def draw(ax):
        for k, s in enumerate(SOURCES):
            colour = f"C{k}"
            xs = [r["train_images"] for r in rows if r["ap50"][s] is not None]
            ax.plot(xs, [r["ap50"][s] for r in rows if r["ap50"][s] is not None], "osD^"[k], color=colour,
                    alpha=0.6, linestyle="none")
            ms = [m for m in summary["per_n"] if m["ap50_mean"][s] is not None]
            ax.plot([m["train_images"] for m in ms], [m["ap50_mean"][s] for m in ms], "-", color=colour, label=s)
            ax.axhline(REFERENCE[s], color=colour, linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ns = sorted({r["train_images"] for r in rows})
        ax.set_xticks(ns)
        ax.set_xticklabels([str(n) for n in ns])
        ax.set_xlabel(f"{source} training images (the other sources whole)")
        ax.set_ylabel("AP50 (VOC07 11-point), test split")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_title("Markers: runs; lines: mean per count; dotted: the COCO-trained SSDLite reference", fontsize=9)
        ax.legend(fontsize=8)

    return save_plot(path, draw)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("split", help="write VOCdevkit views with fewer training images of one source")
    sp.add_argument("--data", required=True, help="VOCdevkit root")
    sp.add_argument("--split", default="trainval")
    sp.add_argument("--source", required=True, help="id prefix of the source to thin out (e.g. coco)")
    sp.add_argument("--keep", type=int, nargs="+", required=True, help="images of the source each view keeps")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True)
    rp = sub.add_parser("report", help="AP50 per source against the number of training images of one source")
    rp.add_argument("--source", required=True)
    rp.add_argument("--point", nargs=3, action="append", required=True, metavar=("N", "REPORT", "CHECKPOINT"),
                    help="a run: its training images of the source, the accuracy_by_size.json that evaluated it, "
                         "and the checkpoint's name in that report")
    rp.add_argument("--split", default="test")
    rp.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.command == "report":
        try:
            rows = gather(args.point, args.split)
        except ValueError as exc:
            ap.error(str(exc))
        summary = summarise(rows)
        result = {"source": args.source, "split": args.split, "reference": REFERENCE, "runs": rows, **summary}
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out / "data_scaling.json", (json.dumps(result, indent=1) + "\n").encode())
        text = markdown(args.source, rows, summary)
        atomic_write_bytes(args.out / "data_scaling.md", text.encode())
        plot(args.out / "data_scaling.png", args.source, rows, summary)
        print(text)
    if args.command == "split":
        try:
            views = write_subsets(Path(args.data), args.split, args.source, args.keep, args.seed, Path(args.out))
        except (DataError, ValueError, FileExistsError) as exc:
            ap.error(str(exc))
        for view in views:
            info = json.loads((view.parent / "subset.json").read_text())
            print(view, json.dumps(info["counts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
