"""Every baseline recipe tried for issue #2, side by side: per-source AP50 of each checkpoint against the 0.75 target
and the COCO-trained SSDLite-MobileNetV2 reference the issue quotes.

Reads ``accuracy_by_size.json`` reports (``benchmarks/accuracy_by_size.py``) and takes, for every checkpoint
evaluated on the test split, its AP50 (VOC07 11-point) over every object, overall and per source. It measures
nothing itself: the figures are those of the reports, which carry their own commands and environments. One checkpoint
reported under several names (the shipped baseline is in most reports) is listed once, with its other names; two
reports that give one name different figures are refused.

    R=benchmarks/results
    python benchmarks/baseline_recipes.py $R/accuracy_by_size.json $R/baseline_{freeze,schedule}/accuracy_by_size.json \\
        $R/baseline_architecture/{input_size,wide_neck,wide_neck/seed1,assigner}/accuracy_by_size.json \\
        $R/baseline_copy_paste/{,p10/,p025/,p05_seed2/,wide160_p05/}accuracy_by_size.json \\
        $R/baseline_freeze/{bbmult01,bbmult01_cp05,bbmult01_cp05_seed1,bbmult01_cp05_seed2}/accuracy_by_size.json \\
        $R/baseline_freeze/bbmult03_cp05/accuracy_by_size.json \\
        $R/gpu_input_size/in{320,416,512}/accuracy_by_size.json --out $R/baseline_recipes

(the committed table; the data-scaling runs, trained on fewer images, and the test-time-size report are left out).

Writes ``baseline_recipes.json``, ``.md`` and ``.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import save_plot  # noqa: E402
from compress.checkpoint import atomic_write_bytes  # noqa: E402

SOURCES = ("overall", "coco", "mot15", "pennfudan")
TARGET = 0.75  # issue #2's acceptance bound (overall)
# As quoted in issue #2: a pretrained COCO SSDLite-MobileNetV2 person detector (300x300) on the same test split.
REFERENCE = {"overall": 0.641, "coco": 0.420, "mot15": 0.798, "pennfudan": 0.961}


def _rounded(ap: Dict[str, Optional[float]]) -> Dict[str, Optional[float]]:
    """Figures compared to 6 digits: the same weights evaluated with other thread counts may differ in the last bits.
    (The figures kept are the first report's, unrounded, so the table rounds once.)"""
    return {s: None if v is None else round(v, 6) for s, v in ap.items()}


def collect(paths: Sequence[Path], split: str = "test") -> List[Dict]:
    """One entry per distinct checkpoint: ``name``, ``aliases``, ``report`` (the first file naming it), ``input_size``
    (the size it was evaluated at, None where the report does not say) and ``ap50`` per source. Raises ValueError
    naming the files when one name carries two different sets of figures."""
    entries: List[Dict] = []
    by_name: Dict[str, Dict] = {}
    for path in paths:
        try:
            found = [(res["checkpoint"], {r["source"]: r["ap50"] for r in res["rows"] if r["range"] == "all"},
                      res.get("input_size"))
                     for res in json.loads(Path(path).read_text())["results"] if res.get("split") == split]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: not an accuracy_by_size report ({type(exc).__name__}: {exc})") from exc
        for name, rows, size in found:
            ap = {s: rows.get("all" if s == "overall" else s) for s in SOURCES}
            ap = {s: None if v is None else float(v) for s, v in ap.items()}
            key = _rounded(ap)
            if name in by_name:
                if _rounded(by_name[name]["ap50"]) != key:
                    raise ValueError(f"{path}: checkpoint {name!r} has other figures than in "
                                     f"{by_name[name]['report']}")
                continue
            same = next((e for e in entries if _rounded(e["ap50"]) == key), None)
            if same is not None:  # equal on every source to 6 digits: the same weights under another name
                same["aliases"].append(name)
            else:
                same = {"name": name, "aliases": [], "report": str(path), "input_size": size, "ap50": ap}
                entries.append(same)
            by_name[name] = same
    if not entries:
        raise ValueError(f"no checkpoint evaluated on the {split!r} split in {', '.join(map(str, paths))}")
    return sorted(entries, key=lambda e: -(e["ap50"]["overall"] or 0.0))


def _fmt(x: Optional[float], digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(entries: List[Dict]) -> str:
    lines = ["# Baseline recipes tried for issue #2", "",
             f"AP50 (VOC07 11-point) on the test split, every object; target overall ≥ {TARGET}. Sorted by overall. "
             "Each checkpoint's recipe and command are in the README beside its report. `input`: the letterbox size "
             "evaluated at (the issue's figure is at 320).", "",
             "| checkpoint | input | " + " | ".join(SOURCES) + " | report |", "|---|" + "---|" * (len(SOURCES) + 2),
             "| *SSDLite-MobileNetV2, COCO-trained, 300×300 (reference quoted in issue #2)* | 300 | "
             + " | ".join(f"{REFERENCE[s]:.3f}" for s in SOURCES) + " | |"]
    for e in entries:
        name = f"`{e['name']}`" + (" (also " + ", ".join(f"`{a}`" for a in e["aliases"]) + ")" if e["aliases"] else "")
        size = e.get("input_size")
        lines.append(f"| {name} | {'–' if size is None else size} | " + " | ".join(_fmt(e["ap50"][s]) for s in SOURCES)
                     + f" | `{e['report']}` |")
    return "\n".join(lines) + "\n"


def plot(path: Path, entries: List[Dict]) -> bool:
    """A row per checkpoint (best overall on top), a marker per source; the reference as hollow markers on its own
    row, the target as a dashed line."""
    rows = [("SSDLite reference (COCO-trained)", REFERENCE)] + [
        (e["name"] + (f" @ {e['input_size']} px" if e.get("input_size") not in (None, 320) else ""), e["ap50"])
        for e in entries]

    def draw(ax):
        for k, source in enumerate(SOURCES):
            colour, marker = f"C{k}", "osD^"[k]
            for i, (_, ap) in enumerate(rows):
                if ap[source] is None:
                    continue
                ax.plot(ap[source], -i, marker=marker, color=colour, linestyle="none", markersize=7,
                        markerfacecolor="none" if i == 0 else colour, label=source if i == 1 else None)
        ax.axvline(TARGET, color="0.3", linestyle="--", linewidth=1, label=f"target overall {TARGET}")
        ax.set_yticks([-i for i in range(len(rows))])
        ax.set_yticklabels([name for name, _ in rows], fontsize=7)
        ax.set_xlabel("AP50 (VOC07 11-point), test split")
        ax.set_xlim(0, 1)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title("Baseline recipes tried for issue #2 (hollow: the COCO-trained reference)", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")

    return save_plot(path, draw, figsize=(9, 1.5 + 0.3 * len(rows)))


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", type=Path, help="accuracy_by_size.json files")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "baseline_recipes")
    args = ap.parse_args(argv)
    try:
        entries = collect(args.reports, args.split)
    except ValueError as exc:
        ap.error(str(exc))
    report = {"split": args.split, "target": TARGET, "reference": REFERENCE, "checkpoints": entries}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "baseline_recipes.json", json.dumps(report, indent=1).encode())
    atomic_write_bytes(args.out / "baseline_recipes.md", markdown(entries).encode())
    plot(args.out / "baseline_recipes.png", entries)
    return report


if __name__ == "__main__":
    main()
