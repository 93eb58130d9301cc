"""Depth against width at equal FLOPs, and the retraining methods at an equal wall-clock budget (issue 4).

Part A, at ``--target`` (default -50 % FLOPs) from one baseline: channel-pruned (``richness``, M1), layer-pruned
(``layer``, M5) and combined (``layer+richness``) -- person AP50 (VOC07 11-point, no fine-tuning), FLOPs,
parameters, number of conv layers, and ONNX Runtime CPU latency of the *fused* models (conv-BN folded, ResConvs
fused; the same fusion for every variant and the baseline), all timed in one run, interleaved round by round,
median of the repeats after warm-up.

Part B: the same pruned model (``--retrain-variant``) retrained by plain, graft, distill and adversarial for the
same ``--finetune-seconds`` each; AP50 recovered. Grafting trains two networks in that time, so it gets half the
steps of each other method: that is the cost the comparison is meant to show.

Part C: layer pruning at ``--low-target`` (default -20 % FLOPs) without any fine-tuning (the seed's "no
retraining needed at low pruning rates").

    python benchmarks/layer_vs_channel.py --checkpoint runs/baseline/final.pt \
        --data ../shared/data/pedestrians/VOCdevkit --finetune-seconds 120 --eval-images 300

Writes ``layer_vs_channel.json``, ``.md`` and ``.png`` (with the environment) to ``--out``
(default ``benchmarks/results/``). Budgets are small by default so that it runs on 2 CPU cores in ~15-20 min;
the machine may be busy with other work, so latency figures are ratios taken in the same run.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import environment, load_baseline, time_variants  # noqa: E402
from compress.checkpoint import atomic_write_bytes  # noqa: E402
from compress.flops import count_flops_params  # noqa: E402
from compress.fusion import fuse_model  # noqa: E402
from compress.inference import evaluate_model, summary_ap  # noqa: E402
from compress.layer_pruning import count_layers  # noqa: E402
from compress.prune_pipeline import (alignment_accuracy, calibration_batch, layer_prune_detector,  # noqa: E402
                                     plan_pruning, prune_detector)
from compress.retrain import METHODS as RETRAIN_METHODS, finetune  # noqa: E402
from compress.voc import VOCDataset  # noqa: E402

VARIANTS = ("richness", "layer", "layer+richness")


def subset(dataset: VOCDataset, n: Optional[int]) -> VOCDataset:
    """Evenly spread ``n`` images of a split (all when ``n`` is None or larger)."""
    if not n or n >= len(dataset):
        return dataset
    sub = copy.copy(dataset)
    idx = np.linspace(0, len(dataset) - 1, num=n).round().astype(int)
    sub.annotations = [dataset.annotations[int(i)] for i in idx]
    return sub


def ap50(model, test_set: VOCDataset, size: int, eval_cfg: Dict[str, Any]) -> float:
    return summary_ap(evaluate_model(model, test_set, size, eval_cfg))["overall"]


def prune_variant(baseline, variant: str, target: float, calib: torch.Tensor, layer_share: float):
    if variant == "richness":
        dec = plan_pruning(baseline, "richness", target, calib)
        res = prune_detector(baseline, dec, "richness", {"kind": "flops", "reduction": target}, 8)
    else:
        res = layer_prune_detector(baseline, variant, target, calib, layer_share=layer_share, log=lambda s: None)
    return res["model"], res["plan"]


def describe(model, size: int) -> Dict[str, Any]:
    cost = count_flops_params(model, (1, 3, size, size))
    return {"flops": cost.flops, "params": cost.params, "conv_layers": count_layers(model)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="baseline checkpoint (default: compress.checkpoint.default_checkpoint())")
    ap.add_argument("--data", help="VOCdevkit root (default: the configured data root)")
    ap.add_argument("--target", type=float, default=0.5, help="FLOPs reduction of part A and B")
    ap.add_argument("--low-target", type=float, default=0.2, help="FLOPs reduction of part C")
    ap.add_argument("--layer-share", type=float, default=0.5, help="layer+richness: share of the target by depth")
    ap.add_argument("--retrain-variant", default="richness", choices=VARIANTS)
    ap.add_argument("--retrain-methods", nargs="+", default=list(RETRAIN_METHODS), choices=RETRAIN_METHODS)
    ap.add_argument("--finetune-seconds", type=float, default=90.0, help="wall-clock budget of each method")
    ap.add_argument("--eval-images", type=int, default=200, help="test images for AP50 (evenly spread)")
    ap.add_argument("--calibration-images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8, help="retraining batch size")
    ap.add_argument("--latency-rounds", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    cfg, ckpt_path, baseline, ckpt, root = load_baseline(args.checkpoint, args.data, args.threads)
    size = baseline.config.input_size
    classes = ckpt["classes"]
    train_set = VOCDataset(root, cfg["data"]["train_split"], classes)
    test_set = subset(VOCDataset(root, cfg["data"]["test_split"], classes), args.eval_images)
    calib = calibration_batch(train_set, size, args.calibration_images)
    eval_cfg = cfg["eval"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, flush=True)  # noqa: E731

    base_ap = ap50(baseline, test_set, size, eval_cfg)
    rows: List[Dict[str, Any]] = [dict(variant="baseline", target=0.0, ap50=base_ap, **describe(baseline, size))]
    models = {"baseline": baseline}
    log(f"baseline AP50 {base_ap:.4f} on {len(test_set)} images")

    # -- part A: depth vs width at equal FLOPs -------------------------------------------------------------------
    for variant in VARIANTS:
        t = time.perf_counter()
        pruned, plan = prune_variant(baseline, variant, args.target, calib, args.layer_share)
        t_prune = time.perf_counter() - t
        row = dict(variant=variant, target=args.target, ap50=ap50(pruned, test_set, size, eval_cfg),
                   layers_removed=len(plan.get("removed_layers") or []), seconds_prune=t_prune,
                   **describe(pruned, size))
        rows.append(row)
        models[variant] = pruned
        log(json.dumps(row, default=float))
    from export.onnx_export import export_onnx

    time_variants(models, lambda m, path: export_onnx(fuse_model(m), path, size, opset=13, classes=classes), rows,
                  size, args.warmup, args.latency_rounds, args.threads)

    # -- part B: retraining methods at equal wall clock ----------------------------------------------------------
    start_model = models[args.retrain_variant]
    start_ap = next(r["ap50"] for r in rows if r["variant"] == args.retrain_variant)
    tcfg = dict(cfg["train"], batch_size=args.batch_size)
    retrain_rows = []
    accuracy = alignment_accuracy(baseline, calib[-16:])
    for method in args.retrain_methods:
        model = copy.deepcopy(start_model)
        res = finetune(model, train_set, tcfg, method, teacher=baseline, seconds=args.finetune_seconds,
                       options={"graft_every": 10}, accuracy_fn=accuracy, log=log)
        final = res["model"]
        row = {"method": method, "steps": res["info"]["steps"], "seconds": res["info"]["seconds"],
               "ap50_before": start_ap, "ap50_after": ap50(final, test_set, size, eval_cfg), **describe(final, size)}
        row["ap50_recovered"] = row["ap50_after"] - start_ap
        if method == "adversarial":
            row["chosen"] = res["chosen"]
        retrain_rows.append(row)
        log(json.dumps(row, default=float))
    plain = next((r for r in retrain_rows if r["method"] == "plain"), None)
    for r in retrain_rows:
        r["vs_plain_points"] = 100 * (r["ap50_after"] - plain["ap50_after"]) if plain else None

    # -- part C: layer pruning at a low rate, no retraining ------------------------------------------------------
    low, low_plan = prune_variant(baseline, "layer", args.low_target, calib, 1.0)
    low_row = dict(variant="layer", target=args.low_target, ap50=ap50(low, test_set, size, eval_cfg),
                   flops_reduction=low_plan["achieved"]["flops_reduction"],
                   layers_removed=len(low_plan["removed_layers"]), **describe(low, size))
    low_row["ap50_drop_points"] = 100 * (base_ap - low_row["ap50"])
    log(json.dumps(low_row, default=float))

    env = environment(args.threads)
    result = {"environment": env, "checkpoint": str(ckpt_path), "settings": vars(args),
              "eval_images": len(test_set), "equal_flops": rows, "retraining": retrain_rows,
              "low_rate_no_retraining": low_row, "seconds_total": time.perf_counter() - t_start}
    atomic_write_bytes(out / "layer_vs_channel.json", json.dumps(result, indent=2, default=float).encode())
    write_markdown(out, result, ckpt_path)
    write_plot(out, rows, retrain_rows)
    print((out / "layer_vs_channel.md").read_text())
    return 0


def write_markdown(out: Path, result: Dict[str, Any], ckpt_path: Path) -> None:
    env, s = result["environment"], result["settings"]
    a = ["| variant | FLOPs (G) | params (M) | conv layers | AP50 (no FT) | ORT CPU median (ms) | p90 (ms) "
         "| speed-up |", "|---|---|---|---|---|---|---|---|"]
    for r in result["equal_flops"]:
        a.append(f"| {r['variant']} | {r['flops'] / 1e9:.3f} | {r['params'] / 1e6:.3f} | {r['conv_layers']} | "
                 f"{r['ap50']:.4f} | {r['ort_cpu']['median_ms']:.2f} | {r['ort_cpu']['p90_ms']:.2f} | "
                 f"{r['speedup']:.2f}x |")
    b = ["| method | steps | seconds | AP50 before | AP50 after | recovered (points) | vs plain (points) |",
         "|---|---|---|---|---|---|---|"]
    for r in result["retraining"]:
        vs = f"{r['vs_plain_points']:+.2f}" if r["vs_plain_points"] is not None else "-"
        b.append(f"| {r['method']} | {r['steps']} | {r['seconds']:.0f} | {r['ap50_before']:.4f} | "
                 f"{r['ap50_after']:.4f} | {100 * r['ap50_recovered']:+.2f} | {vs} |")
    c = result["low_rate_no_retraining"]
    base_ap = result["equal_flops"][0]["ap50"]
    md = (f"# Layer vs channel pruning, and retraining methods\n\n"
          f"Baseline `{ckpt_path}`; AP50 = person AP50 (VOC07 11-point) on {result['eval_images']} test images. "
          f"Latency: fused models (conv-BN folded, ResConvs fused), ONNX Runtime {env['onnxruntime']} CPU, "
          f"{s['threads']} threads, batch 1, {s['latency_rounds']} interleaved rounds after {s['warmup']} warm-up "
          f"runs, on {env['cpu']} ({env['platform']}, {env['cpus']} CPUs), {env['date']}.\n\n"
          f"## A. Equal FLOPs (-{100 * s['target']:.0f} %), no fine-tuning\n\n" + "\n".join(a) +
          f"\n\n## B. Retraining `{s['retrain_variant']}` at an equal wall-clock budget ({s['finetune_seconds']:.0f} s "
          f"each, batch {s['batch_size']})\n\n" + "\n".join(b) +
          f"\n\n## C. Layer pruning at -{100 * s['low_target']:.0f} % FLOPs without retraining\n\n"
          f"Achieved -{100 * c['flops_reduction']:.1f} % FLOPs by removing {c['layers_removed']} layers: AP50 "
          f"{c['ap50']:.4f} against the baseline's {base_ap:.4f} ({-c['ap50_drop_points']:+.2f} points).\n\n"
          f"![AP50 and latency](layer_vs_channel.png)\n")
    atomic_write_bytes(out / "layer_vs_channel.md", md.encode())


def write_plot(out: Path, rows: List[Dict[str, Any]], retrain_rows: List[Dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for r in rows:
        ax1.plot(r["ort_cpu"]["median_ms"], r["ap50"], "o")
        ax1.annotate(f"{r['variant']} ({r['conv_layers']} convs)", (r["ort_cpu"]["median_ms"], r["ap50"]),
                     textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax1.set_xlabel("ONNX Runtime CPU latency, median (ms)")
    ax1.set_ylabel("person AP50, no fine-tuning")
    ax1.set_title("equal FLOPs")
    ax1.grid(alpha=0.3)
    names = [r["method"] for r in retrain_rows]
    ax2.bar(names, [100 * r["ap50_recovered"] for r in retrain_rows])
    ax2.set_ylabel("AP50 recovered (points)")
    ax2.set_title("equal wall-clock retraining")
    ax2.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "layer_vs_channel.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
