"""Fit and check the latency model that drives the latency-aware allocation (``compress.criteria.LatencyModel``).

Profiles every convolution of several detector structures (the baseline and pruned variants, structure only) with
ONNX Runtime's per-node profiler, and fits ``latency = MACs / P + bytes / B`` over all of them (least squares, no
intercept); MACs come from the logged input and output shapes, bytes are what ONNX Runtime logs as the node's
activation + parameter + output sizes. Reports the fit against MACs alone (R^2, median relative error per node),
and, per structure, the speed-up that each model predicts against the end-to-end speed-up timed side by side.

    OMP_NUM_THREADS=1 python benchmarks/latency_model.py --data ../shared/data/pedestrians/VOCdevkit --threads 1

Results: ``benchmarks/results/latency_model.{json,md,png}``. The ``ort-cpu`` entry of
``compress.criteria.LATENCY_MODELS`` holds the fitted P and B.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import (cpu_session, environment, export_detector, load_baseline, save_plot,  # noqa: E402
                               time_variants)
from compress.checkpoint import atomic_write_bytes  # noqa: E402
from compress.criteria import LATENCY_MODELS  # noqa: E402
from compress.flops import count_flops_params  # noqa: E402
from compress.prune_pipeline import calibration_batch, plan_pruning, prune_detector  # noqa: E402
from compress.voc import VOCDataset  # noqa: E402

# (name, method, FLOPs target, latency tilt): structures that differ in where the cuts go
STRUCTURES = [("richness@50", "richness", 0.5, 0.0), ("richness+lat@50", "richness", 0.5, 1.0),
              ("l1@50", "l1", 0.5, 0.0), ("richness@70", "richness", 0.7, 0.0), ("richness+lat@70", "richness", 0.7, 1.0)]


def profile_convs(onnx_path: str, size: int, runs: int, warmup: int, threads: int) -> List[Dict[str, float]]:
    """Median kernel time (s), MACs and bytes moved of every Conv node ONNX Runtime runs (after its fusions)."""
    sess = cpu_session(onnx_path, threads, profile_prefix=os.path.join(os.path.dirname(onnx_path), "profile"))
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    for _ in range(warmup + runs):
        sess.run(None, {"images": x})
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    times: Dict[str, List[float]] = defaultdict(list)
    info: Dict[str, Dict[str, float]] = {}
    for e in events:
        args = e.get("args", {})
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or args.get("op_name") != "Conv":
            continue
        times[e["name"]].append(e["dur"] * 1e-6)
        if e["name"] not in info:
            (out_shape,) = [list(d.values())[0] for d in args["output_type_shape"]]
            w_shape = list(args["input_type_shape"][1].values())[0]
            info[e["name"]] = {"macs": float(np.prod(out_shape[1:]) * np.prod(w_shape[1:])),
                               "bytes": float(int(args["activation_size"]) + int(args["parameter_size"])
                                              + int(args["output_size"]))}
    return [dict(info[n], seconds=float(np.median(t[warmup:]))) for n, t in times.items()]


def fit(nodes: List[Dict[str, float]]) -> Dict[str, Any]:
    y = np.array([n["seconds"] for n in nodes])
    X = np.array([[n["macs"], n["bytes"]] for n in nodes])
    out = {}
    for label, cols in (("macs_and_bytes", [0, 1]), ("macs_only", [0])):
        coef = np.linalg.lstsq(X[:, cols], y, rcond=None)[0]
        pred = X[:, cols] @ coef
        out[label] = {"coef": coef.tolist(), "r2": float(1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()),
                      "median_rel_error": float(np.median(np.abs(pred - y) / y))}
    a, b = out["macs_and_bytes"]["coef"]
    out["macs_per_s"], out["bytes_per_s"] = 1 / a, 1 / b
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="VOCdevkit root (calibration images of the richness criterion)")
    ap.add_argument("--checkpoint", help="baseline checkpoint (default: shipped)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=100, help="profiled runs per structure (after --warmup)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--latency-rounds", type=int, default=100, help="end-to-end timing rounds, all structures")
    ap.add_argument("--round-to", type=int, default=16)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    cfg, ckpt_path, baseline, ckpt, root = load_baseline(args.checkpoint, args.data, args.threads)
    size = baseline.config.input_size
    calib = calibration_batch(VOCDataset(root, "trainval", ckpt["classes"]), size, 64)
    models = {"baseline": baseline}
    for name, method, target, tilt in STRUCTURES:
        dec = plan_pruning(baseline, method, target, calib, round_to=args.round_to, min_channels=args.round_to,
                           latency_model="ort-cpu" if tilt else None, latency_tilt=tilt)
        models[name] = prune_detector(baseline, dec, method, {"kind": "flops", "reduction": target},
                                      args.round_to)["model"]
        print(f"{name}: structure ready", flush=True)
    per_structure: Dict[str, List[Dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, m in models.items():
            path = os.path.join(tmp, name.replace("@", "_").replace("+", "_") + ".onnx")
            export_detector(m, path, size)
            per_structure[name] = profile_convs(path, size, args.runs, args.warmup, args.threads)
            print(f"{name}: {len(per_structure[name])} conv nodes profiled", flush=True)
    result = fit([n for nodes in per_structure.values() for n in nodes])
    rows = [{"variant": k} for k in models]
    time_variants(models, lambda m, p: export_detector(m, p, size), rows, size, 10, args.latency_rounds,
                  args.threads)
    a_mb, b_mb = result["macs_and_bytes"]["coef"]
    (a_m,) = result["macs_only"]["coef"]

    def modelled(name: str, two_terms: bool) -> float:
        return sum(a_mb * n["macs"] + b_mb * n["bytes"] if two_terms else a_m * n["macs"] for n in per_structure[name])

    base_macs = count_flops_params(baseline, (1, 3, size, size)).macs
    for r in rows:
        name = r["variant"]
        r["macs"] = count_flops_params(models[name], (1, 3, size, size)).macs
        r["flop_ratio"] = base_macs / r["macs"]
        r["conv_seconds_profiled"] = sum(n["seconds"] for n in per_structure[name])
        r["predicted_speedup"] = modelled("baseline", True) / modelled(name, True)
        r["predicted_speedup_macs_only"] = modelled("baseline", False) / modelled(name, False)
    result.update(environment=environment(args.threads), checkpoint=str(ckpt_path), round_to=args.round_to,
                  nodes=per_structure, rows=rows, in_use=vars(LATENCY_MODELS["ort-cpu"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "latency_model.json", json.dumps(result, indent=2, default=float).encode())
    env = result["environment"]
    mb, mo = result["macs_and_bytes"], result["macs_only"]
    lines = ["| structure | FLOPs ratio | measured speed-up (end to end) | predicted, MACs + bytes | predicted, MACs only |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['flop_ratio']:.2f}x | {r['speedup']:.3f}x | {r['predicted_speedup']:.3f}x | "
                     f"{r['predicted_speedup_macs_only']:.3f}x |")
    md = (f"# Latency model of a convolution: MACs / P + bytes / B\n\nONNX Runtime {env['onnxruntime']} CPU, "
          f"{args.threads} thread(s), {env['cpu']}; {sum(len(v) for v in per_structure.values())} convolution nodes "
          f"of {len(models)} structures (channels rounded to {args.round_to}), median of {args.runs} profiled runs "
          f"each.\n\n| model | R^2 per node | median relative error per node |\n|---|---|---|\n"
          f"| MACs / P + bytes / B (P = {result['macs_per_s'] / 1e9:.1f} G MAC/s, B = "
          f"{result['bytes_per_s'] / 1e9:.2f} GB/s) | {mb['r2']:.3f} | {100 * mb['median_rel_error']:.1f}% |\n"
          f"| MACs alone | {mo['r2']:.3f} | {100 * mo['median_rel_error']:.1f}% |\n\n"
          "Speed-up over the baseline: end to end (median of interleaved rounds, whole graph) against what each "
          "model predicts from the profiled convolutions.\n\n" + "\n".join(lines)
          + "\n\n![measured against modelled, per node](latency_model.png)\n")
    atomic_write_bytes(out / "latency_model.md", md.encode())

    def draw(ax):
        nodes = [n for v in per_structure.values() for n in v]
        y = np.array([n["seconds"] for n in nodes]) * 1e6
        ax.loglog(y, [(a_m * n["macs"]) * 1e6 for n in nodes], ".", alpha=0.5, label=f"MACs alone (R^2 {mo['r2']:.2f})")
        ax.loglog(y, [(a_mb * n["macs"] + b_mb * n["bytes"]) * 1e6 for n in nodes], ".", alpha=0.7,
                  label=f"MACs / P + bytes / B (R^2 {mb['r2']:.2f})")
        ax.plot([y.min(), y.max()], [y.min(), y.max()], "k--", lw=1)
        ax.set_xlabel("measured kernel time per convolution (us)")
        ax.set_ylabel("modelled (us)")
        ax.grid(alpha=0.3, which="both")
        ax.legend()

    save_plot(out / "latency_model.png", draw)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
