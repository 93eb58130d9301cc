"""The build report: ``report.json`` (one row per variant and backend, the environment) and ``report.md`` with
plots (AP50 against latency and FLOPs, kept channels per layer, latency distributions), and the console table."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List

from compress.checkpoint import atomic_write_bytes


def _ap(result: Dict[str, Any]) -> Dict[str, float]:
    from compress.inference import summary_ap

    return summary_ap(result)


def build_rows(manifest: Dict[str, Any], bench: Dict[str, Any], accuracy: Dict[str, Any],
               bundle_dir: Path) -> List[Dict[str, Any]]:
    rows = []
    for name, entry in manifest["variants"].items():
        b = bench["variants"][name]
        ap = _ap(accuracy[name])
        rows.append({
            "variant": name, "backend": bench.get("backend"), "flops": entry["flops"], "params": entry["params"],
            "onnx_bytes": (bundle_dir / entry["file"]).stat().st_size, "ap50": ap["overall"],
            "ap50_per_source": {k: v for k, v in ap.items() if k != "overall"},
            "ap50_all_point": float(next(iter(accuracy[name]["all_point"]["ap"].values()))),
            "latency_ms": b["latency_ms"], "gpu_ms": b.get("gpu_ms"), "pipeline": b.get("pipeline"),
            "memory": b.get("memory"),
        })
    base = next(r for r in rows if r["variant"] == "baseline")
    for r in rows:
        r["ratios_vs_baseline"] = {
            "latency_speedup": base["latency_ms"]["median"] / r["latency_ms"]["median"],
            "flops": r["flops"] / base["flops"], "params": r["params"] / base["params"],
            "onnx_bytes": r["onnx_bytes"] / base["onnx_bytes"], "ap50_delta": r["ap50"] - base["ap50"],
        }
    return rows


def _plots(run_dir: Path, rows: List[Dict[str, Any]], bench: Dict[str, Any], plan: Dict[str, Any]) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        axes[0].scatter(r["latency_ms"]["median"], r["ap50"], s=60, label=r["variant"])
        axes[1].scatter(r["flops"] / 1e9, r["ap50"], s=60, label=r["variant"])
    axes[0].set_xlabel(f"latency, median ms ({rows[0]['backend']})")
    axes[1].set_xlabel("GFLOPs")
    for ax in axes:
        ax.set_ylabel("person AP50 (VOC07)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "ap_vs_cost.png", dpi=110)
    plt.close(fig)
    files.append("ap_vs_cost.png")

    layers = [(n, s) for n, s in plan["layers"].items() if s["kind"] == "conv"]
    fig, ax = plt.subplots(figsize=(12, 4))
    xs = range(len(layers))
    ax.bar(xs, [s["out"] for _, s in layers], color="#cccccc", label="baseline")
    ax.bar(xs, [len(s["keep_out"]) if s["keep_out"] is not None else s["out"] for _, s in layers], color="#1f77b4",
           label="kept")
    ax.set_xlabel("convolution (network order)")
    ax.set_ylabel("output channels")
    ax.set_title(f"kept channels per layer ({plan['method']}, -{100 * plan['achieved']['flops_reduction']:.0f}% FLOPs)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "kept_channels.png", dpi=110)
    plt.close(fig)
    files.append("kept_channels.png")

    samples = {n: v.get("samples_ms") for n, v in bench["variants"].items() if v.get("samples_ms")}
    if samples:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.hist(list(samples.values()), bins=40, label=list(samples), alpha=0.7)
        ax.set_xlabel("end-to-end inference latency (ms)")
        ax.set_ylabel("runs")
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / "latency_hist.png", dpi=110)
        plt.close(fig)
        files.append("latency_hist.png")
    return files


def write_report(run_dir: Path, bundle_dir: Path, bench: Dict[str, Any], accuracy: Dict[str, Any],
                 plan_path: Path, records: Dict[str, Any], cfg: Dict[str, Any]) -> Dict[str, Any]:
    run_dir = Path(run_dir)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    plan = json.loads(Path(plan_path).read_text())
    rows = build_rows(manifest, bench, accuracy, bundle_dir)
    plots = _plots(run_dir, rows, bench, plan)
    env = bench.get("environment", {})
    report = {"rows": rows, "environment": env, "backend": bench.get("backend"), "bundle": str(bundle_dir),
              "plan": {"method": plan["method"], "target": plan["target"], "achieved": plan["achieved"]},
              "stages": {k: {"seconds": v.get("seconds"), "skipped": v.get("skipped")} for k, v in records.items()}}
    head = ("| variant | GFLOPs | params (M) | ONNX (MB) | AP50 VOC07 | latency median (ms) | p90 | p99 | "
            "speed-up | FLOPs ratio |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lat = r["latency_ms"]
        lines.append(f"| {r['variant']} | {r['flops'] / 1e9:.3f} | {r['params'] / 1e6:.3f} | "
                     f"{r['onnx_bytes'] / 1e6:.2f} | {r['ap50']:.4f} | {lat['median']:.2f} | {lat['p90']:.2f} | "
                     f"{lat['p99']:.2f} | {r['ratios_vs_baseline']['latency_speedup']:.2f}x | "
                     f"{r['ratios_vs_baseline']['flops']:.2f} |")
    per_source = []
    for r in rows:
        if r["ap50_per_source"]:
            per_source.append(f"- {r['variant']}: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                                  sorted(r["ap50_per_source"].items())))
    stage_lines = []
    for k, v in records.items():
        took = "skipped (up to date)" if v.get("skipped") else f"{v.get('seconds') or 0.0:.1f} s"
        stage_lines.append(f"| {k} | {took} |")
    md = [
        "# jetson-compress build report", "",
        f"Pruning: **{plan['method']}**, target -{100 * plan['target']['reduction']:.0f}% {plan['target']['kind']}, "
        f"achieved -{100 * plan['achieved']['flops_reduction']:.1f}% FLOPs and "
        f"-{100 * plan['achieved']['params_reduction']:.1f}% parameters"
        + (f"; kept whole: {', '.join(f'`{n}`' for n in plan['target']['keep_whole'])}"
           if plan["target"].get("keep_whole") else "")
        + (f"; channels chosen by {plan['target']['channel_criterion']}."
           if plan["target"].get("channel_criterion") else "."),
        f"Latency measured by the device runtime (`{bench.get('backend')}` backend) with warm-up, all variants in one "
        "run; accuracy measured on the exported ONNX through `runtime/` (not on the torch model).", "",
        "\n".join(lines), "",
        "Per source (AP50 VOC07):", "", *per_source, "",
        "What the columns mean: *speed-up* is baseline median latency / variant median latency; *FLOPs ratio* is "
        "variant FLOPs / baseline FLOPs. On the Nano, run `python3 -m jetson.benchmark BUNDLE --backend trt` for "
        "the TensorRT FP16 figures.", "",
        *[f"![{p}]({p})" for p in plots], "",
        "## Environment", "", "```", json.dumps(env, indent=2, default=str), "```", "",
        "## Stages", "", "| stage | time |", "|---|---|", *stage_lines, "",
    ]
    atomic_write_bytes(run_dir / "report.md", "\n".join(md).encode())
    atomic_write_bytes(run_dir / "report.json", json.dumps(report, indent=2, default=_json_default).encode())
    report["console_table"] = "\n".join(lines)
    return report


def _json_default(o):
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)
