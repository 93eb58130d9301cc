"""Ours against Torch-Pruning as the fine-tune budget grows: collects committed ``prune_compare.py`` results
(JSON) and tabulates / plots AP50 after fine-tuning against the fine-tune epochs, per FLOPs target and method, every
seed shown. Only comparable runs are taken: the same channel rounding, no distillation, the baseline's frozen blocks,
learning rate and EMA decay, one warm-up length (``--warmup``; none by default, ``prune_compare.py``'s default), no
configuration override (``--set``, e.g. another batch size), our allocation without structural options
(``--keep-whole``, a ``--min-channels`` other than the rounding).

    python benchmarks/finetune_budget.py benchmarks/results/prune_compare/*/*.json [--warmup EPOCHS] \
        [--drop PATTERN[:METHOD] ...] [--out PATH]

``--drop`` leaves out the files whose path contains PATTERN (only METHOD's rows of them, if given): a run superseded
by a matched one, or a structure that belongs to another comparison.

No measurement of its own: it reads results, so it is as honest as the runs it is given (each row names its file).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import save_plot  # noqa: E402
from compress.checkpoint import atomic_write_bytes  # noqa: E402

# (method, column heading, plot colour), in the order of the table's columns
COLUMNS = (("richness+comp", "richness + comp", "tab:blue"),
           ("richness+comp+streams", "richness + comp + fine streams", "tab:green"),
           ("richness+comp+streams+gl1", "richness + comp + fine streams + group-l1", "tab:purple"),
           ("richness+comp+streams+rec", "richness + comp + fine streams + reconstruction", "tab:brown"),
           ("torch-pruning", "Torch-Pruning", "tab:orange"),
           ("torch-pruning+streams", "Torch-Pruning + fine streams", "tab:red"))
METHODS = tuple(m for m, _, _ in COLUMNS)
OURS, TP = "richness+comp", "torch-pruning"
# (key, ours' method, Torch-Pruning's method, column heading): the gaps tabulated, on the means of seeds
GAPS = (("ours_minus_tp", OURS, TP, "ours − TP"),
        ("streams_minus_tp", OURS + "+streams", TP, "ours + streams − TP"),
        ("streams_minus_tp_streams", OURS + "+streams", TP + "+streams", "ours + streams − TP + streams"),
        ("gl1_minus_tp", OURS + "+streams+gl1", TP, "ours + streams + group-l1 − TP"),
        ("rec_minus_tp", OURS + "+streams+rec", TP, "ours + streams + reconstruction − TP"))
FINE_STREAMS = ["backbone.features.2.conv.2", "backbone.features.4.conv.2"]  # what ``--keep-whole fine-streams`` names


def collect(paths: List[Path], round_to: int, targets=(0.5, 0.7), drop=(),
            warmup: float = 0.0) -> List[Dict[str, Any]]:
    """One record per (file, method, target) of a comparable run: epochs, seed, AP50 after fine-tune.

    A run's FLOPs target is taken to the nearest tenth (``target``; the exact one is ``target_exact``): Torch-Pruning's
    uniform ratio lands at -68.3% for a -70% target, and ours is cut to that FLOPs with ``--targets 0.6832``. A run
    made with ``--keep-whole`` naming exactly the fine streams counts as ``richness+comp+streams``; any other
    structural option leaves the run out, and so does a fine-tune warm-up other than ``warmup`` epochs or any
    ``--set`` override of the configuration. ``drop``: ``PATTERN`` or ``PATTERN:METHOD`` strings; a file whose path
    contains PATTERN is left out (only METHOD's rows, after the relabelling above, when METHOD is given)."""
    rules = [(pat, m) if sep else (d, None) for d in drop for pat, sep, m in [d.rpartition(":")]]
    for rule, (pat, m) in zip(drop, rules):
        if m is not None and m not in METHODS:
            raise ValueError(f"--drop {rule}: {m!r} is not one of {', '.join(METHODS)}")
        if not any(pat in str(p) for p in paths):
            raise ValueError(f"--drop {rule}: no result file's path contains {pat!r}")
    out = []
    for path in paths:
        dropped = {m for pat, m in rules if pat in str(path)}  # None: the whole file
        if None in dropped:
            continue
        d = json.loads(path.read_text())
        whole = d.get("keep_whole") or []
        if (d.get("round_to") != round_to or (d.get("distill_weight") or 0.0) != 0.0
                or d.get("freeze_blocks") not in (None, 4) or d.get("finetune_lr") not in (None, 0.002)
                or (d.get("finetune_warmup_epochs") or 0) != warmup or d.get("ema_decay") not in (None, 0.9995)
                or (whole and whole != FINE_STREAMS) or d.get("min_channels", round_to) != round_to
                or d.get("overrides")):
            continue
        base = next(r["ap50_after"] for r in d["rows"] if r["method"] == "baseline")
        for r in d["rows"]:
            method = OURS + "+streams" if whole and r["method"] == OURS else r["method"]
            target = round(r["target"], 1)
            if method in dropped:
                continue
            if method in METHODS and target in targets and d.get("finetune_epochs", 0) > 0:
                key = (method, target, d["finetune_epochs"], d.get("finetune_seed") or 0)
                twin = next((o["file"] for o in out if (o["method"], o["target"], o["epochs"], o["seed"]) == key), None)
                if twin:
                    raise ValueError(f"{path}: {key} is also in {twin}; give each run once")
                out.append({"file": str(path), "method": method, "target": target, "target_exact": r["target"],
                            "epochs": d["finetune_epochs"], "seed": d.get("finetune_seed") or 0,
                            "ap50": r["ap50_after"], "gflops": r["flops"] / 1e9, "baseline": base})
    return out


def summarise(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per (target, epochs): each method's AP50 per seed and mean, and the :data:`GAPS` (ours minus Torch-Pruning)
    on the means."""
    rows = []
    for target, epochs in sorted({(r["target"], r["epochs"]) for r in records}):
        row: Dict[str, Any] = {"target": target, "epochs": epochs}
        for m in METHODS:
            mine = [r for r in records if (r["target"], r["epochs"], r["method"]) == (target, epochs, m)]
            aps = {r["seed"]: r["ap50"] for r in mine}
            row[m] = {"per_seed": aps, "mean": statistics.mean(aps.values()) if aps else None,
                      "gflops": sorted({round(r["gflops"], 3) for r in mine})}
        for key, ours, tp, _ in GAPS:
            if row[ours]["mean"] is not None and row[tp]["mean"] is not None:
                row[key] = row[ours]["mean"] - row[tp]["mean"]
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="prune_compare JSON files")
    ap.add_argument("--round-to", type=int, default=16)
    ap.add_argument("--warmup", type=float, default=0.0, metavar="EPOCHS",
                    help="tabulate the runs fine-tuned with this learning-rate warm-up (prune_compare's "
                         "--finetune-warmup; default 0)")
    ap.add_argument("--drop", nargs="+", default=[], metavar="PATTERN[:METHOD]",
                    help="leave out the files whose path contains PATTERN (only METHOD's rows of them, if given)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "prune_compare" / "finetune_budget"))
    args = ap.parse_args(argv)
    try:
        records = collect([Path(p) for p in args.results], args.round_to, drop=args.drop, warmup=args.warmup)
    except ValueError as e:
        print(f"finetune_budget: {e}", file=sys.stderr)
        return 2
    if not records:
        print(f"no comparable run (round_to {args.round_to}, warm-up {args.warmup:g} epochs, no distillation) among "
              f"{len(args.results)} files",
              file=sys.stderr)
        return 1
    rows = summarise(records)
    baseline = statistics.mean(r["baseline"] for r in records)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out.with_suffix(".json"), json.dumps(
        {"round_to": args.round_to, "finetune_warmup_epochs": args.warmup, "baseline_ap50": baseline, "rows": rows,
         "records": records}, indent=2).encode())

    def cell(v: Dict[str, Any]) -> str:
        if v["mean"] is None:
            return "—"
        seeds = " / ".join(f"{ap:.4f}" for _, ap in sorted(v["per_seed"].items()))
        return f"{v['mean']:.4f} ({seeds})" if len(v["per_seed"]) > 1 else seeds

    # Only the methods that ran and the gaps that could be taken get a column.
    shown = [(m, h) for m, h, _ in COLUMNS if any(r["method"] == m for r in records)]
    gaps_shown = [g for g in GAPS if any(g[0] in r for r in rows)]
    head = (["FLOPs cut", "fine-tune epochs"] + [f"{h} (seeds)" for _, h in shown]
            + [f"{g[3]} (points)" for g in gaps_shown] + ["GFLOPs, in the order of the methods"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        gaps = [f"{100 * r[g[0]]:+.1f}" if g[0] in r else "—" for g in gaps_shown]
        gflops = " / ".join(", ".join(f"{g:.3f}" for g in r[m]["gflops"]) or "—" for m, _ in shown)
        lines.append("| " + " | ".join([f"−{int(r['target'] * 100)}%", str(r["epochs"])]
                                       + [cell(r[m]) for m, _ in shown] + gaps + [gflops]) + " |")
    warm = f"a {args.warmup:g}-epoch learning-rate warm-up" if args.warmup else "no warm-up"
    md = (f"# Ours against Torch-Pruning by fine-tune budget\n\nAP50 (VOC07 11-point, original test images) after "
          f"fine-tuning ({warm}), channels rounded to {args.round_to}, no distillation; baseline {baseline:.4f}. From "
          f"{len({r['file'] for r in records})} `prune_compare.py` result files (listed in `{out.name}.json`).\n\n"
          + "\n".join(lines) + f"\n\n![AP50 by fine-tune epochs]({out.name}.png)\n")
    atomic_write_bytes(out.with_suffix(".md"), md.encode())
    targets = sorted({r["target"] for r in records})

    def draw(axes):
        for ax, target in zip(axes, targets):
            for m, _, colour in COLUMNS:
                pts = [r for r in records if r["target"] == target and r["method"] == m]
                ax.plot([r["epochs"] for r in pts], [r["ap50"] for r in pts], "o", color=colour, alpha=0.5)
                means = [(r["epochs"], r[m]["mean"]) for r in rows if r["target"] == target and r[m]["mean"] is not None]
                if means:
                    ax.plot([e for e, _ in means], [a for _, a in means], "-", marker="_", ms=12, mew=2, color=colour,
                            label=f"{m} (mean of seeds)")
            ax.axhline(baseline, color="k", ls="--", lw=0.8, label="baseline")
            ax.set_title(f"−{int(target * 100)}% FLOPs")
            ax.set_xlabel("fine-tune epochs")
            ax.set_ylabel("person AP50 after fine-tune")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)

    save_plot(out.with_suffix(".png"), draw if len(targets) > 1 else (lambda ax: draw([ax])), figsize=(11, 4.5),
              ncols=len(targets))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
