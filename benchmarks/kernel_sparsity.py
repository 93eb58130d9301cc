"""What M4's fine granularity buys: kernel-level sparsity next to channel pruning, on paper and measured.

M4 (``../shared/docs/methods.md``) zeroes k x k kernels inside the filters it cannot remove (dimension-matched
positions: the residual streams' producers) and removes whole filters elsewhere. Zeros inside a dense tensor cut
parameters and FLOPs on paper; whether they cut latency is measured here. Variants of the shipped baseline:

- ``baseline``;
- ``kernels@dim-matched50``: half of the kernels of every dimension-matched convolution zeroed (M4's fine step);
- ``kernels@all-convs``: kernels zeroed in every convolution, as many as it takes for -50% FLOPs on paper;
- ``channels@50``: our channel cut to -50% FLOPs (richness + compensation + the fine streams kept whole + group-l1,
  as ``jetson-compress build``), channels rounded to ``--round-to``;
- ``channels@50+kernels50``: both granularities, M4 as stated (kernel sparsity on the channel-cut model's
  dimension-matched convolutions).

Columns: FLOPs and parameters dense (what runs) and on paper (zeros not counted), the deployed ONNX file (fused,
``export_onnx``) raw and gzip-compressed and its zero weights, AP50 right after the cut and after a fine-tune of
``--finetune-epochs`` with the zeros kept zero (every variant the same recipe; with epochs > 0 the unpruned baseline
gets the same fine-tune as a control), and ONNX Runtime CPU latency of every variant in one run, interleaved, after
warm-up.

    python benchmarks/kernel_sparsity.py --data ../shared/data/pedestrians/VOCdevkit --finetune-epochs 2

Results: JSON, Markdown and a plot in ``benchmarks/results/kernel_sparsity.*``.
"""
from __future__ import annotations

import argparse
import copy
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import environment, load_baseline, save_plot, time_variants  # noqa: E402
from compress.checkpoint import atomic_write_bytes  # noqa: E402
from compress.flops import count_flops_params  # noqa: E402
from compress.fusion import fuse_model  # noqa: E402
from compress.inference import evaluate_model, summary_ap  # noqa: E402
from compress.prune_pipeline import calibration_batch, expand_keep_whole, plan_pruning, prune_detector  # noqa: E402
from compress.sparsity import PAPER_ONLY_NOTE, sparsify_dimension_matched  # noqa: E402
from compress.train import train  # noqa: E402
from compress.voc import VOCDataset  # noqa: E402
from export.onnx_export import export_onnx  # noqa: E402


def onnx_file_facts(path: str) -> Dict[str, Any]:
    """Size of the ONNX file raw and gzip-compressed, and the zeros of its convolution weights (4-D initializers)."""
    import onnx
    from onnx import numpy_helper

    data = Path(path).read_bytes()
    zeros = total = zero_kernels = 0
    for init in onnx.load_from_string(data).graph.initializer:
        if len(init.dims) == 4:
            w = numpy_helper.to_array(init)
            zeros += int((w == 0).sum())
            total += w.size
            zero_kernels += int((np.abs(w).sum((2, 3)) == 0).sum())
    return {"onnx_bytes": len(data), "onnx_gzip_bytes": len(gzip.compress(data, 6)), "conv_weights": total,
            "conv_weights_zero": zeros, "conv_kernels_zero": zero_kernels}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="VOCdevkit root")
    ap.add_argument("--checkpoint", help="baseline checkpoint (default: shipped)")
    ap.add_argument("--ratio", type=float, default=0.5, help="kernel sparsity at the dimension-matched convolutions")
    ap.add_argument("--target", type=float, default=0.5,
                    help="FLOPs cut of the channel variants, and the paper FLOPs cut of kernels@all-convs")
    ap.add_argument("--round-to", type=int, default=16, dest="round_to",
                    help="channel rounding (16: ONNX Runtime's NCHWc block on this AVX-512 CPU; 8 on the Nano)")
    ap.add_argument("--finetune-epochs", type=int, default=0)
    ap.add_argument("--finetune-warmup", type=float, default=1.0, metavar="EPOCHS")
    ap.add_argument("--seed", type=int, help="seed of the fine-tune (default: the configuration's train.seed)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (evaluation, fine-tune)")
    ap.add_argument("--latency-threads", type=int, default=1,
                    help="ONNX Runtime intra-op threads of the timing (1: on this 2-core machine two threads were "
                         "slower and far noisier than one)")
    ap.add_argument("--latency-rounds", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if not 0.0 < args.ratio < 1.0 or not 0.0 < args.target < 1.0:
        ap.error("--ratio and --target must be strictly between 0 and 1")

    cfg, ckpt_path, baseline, ckpt, root = load_baseline(args.checkpoint, args.data, args.threads)
    size = baseline.config.input_size
    classes = list(ckpt["classes"])
    train_set = VOCDataset(root, "trainval", classes)
    test_set = VOCDataset(root, "test", classes)
    calib = calibration_batch(train_set, size, 64)
    base_cost = count_flops_params(baseline, (1, 3, size, size))

    # Our channel cut, made once (both channel variants start from copies of it).
    whole = expand_keep_whole(baseline, ["fine-streams"])
    dec = plan_pruning(baseline, "richness", args.target, calib, round_to=args.round_to,
                       min_channels=args.round_to, keep_whole=whole, channel_criterion="group-l1")
    tgt = {"kind": "flops", "reduction": args.target, "keep_whole": whole, "channel_criterion": "group-l1"}
    cut = prune_detector(baseline, dec, "richness", tgt, args.round_to, compensate_with=calib[:32])["model"]

    all_convs = [n for n, m in baseline.named_modules() if isinstance(m, nn.Conv2d)]
    conv_names = set(all_convs)
    conv_macs = sum(l.macs for l in base_cost.per_layer if l.name in conv_names)
    all_ratio = min(args.target * base_cost.macs / conv_macs, 0.99)
    # name -> (the model it starts from (copied), kernel sparsity ratio or None, the convolutions it applies to
    # (None: dimension-matched))
    recipes = {
        f"kernels@dim-matched{int(args.ratio * 100)}": (baseline, args.ratio, None),
        "kernels@all-convs": (baseline, all_ratio, all_convs),
        f"channels@{int(args.target * 100)}": (cut, None, None),
        f"channels@{int(args.target * 100)}+kernels{int(args.ratio * 100)}": (cut, args.ratio, None),
    }
    ft_cfg = dict(cfg["train"], epochs=args.finetune_epochs, warmup_epochs=args.finetune_warmup,
                  **({"seed": args.seed} if args.seed is not None else {}))
    t = time.perf_counter()
    base_ap = summary_ap(evaluate_model(baseline, test_set, size, cfg["eval"]))
    rows: List[Dict[str, Any]] = [{"variant": "baseline", "kernel_ratio": 0.0, "dense_flops": base_cost.flops,
                                   "paper_flops": base_cost.flops, "dense_params": base_cost.params,
                                   "paper_params": base_cost.params, "ap50_cut": base_ap, "ap50_after": base_ap,
                                   "seconds": time.perf_counter() - t}]
    models: Dict[str, Any] = {"baseline": baseline}
    with tempfile.TemporaryDirectory() as tmp:
        control: Dict[str, Any] = {}
        if args.finetune_epochs > 0:  # what the same fine-tune does to the unpruned baseline
            model = copy.deepcopy(baseline)
            summ = train(model, train_set, Path(tmp) / "control", ft_cfg, eval_set=test_set, eval_cfg=cfg["eval"],
                         resume=False, progress=False)
            control = {"ap50_after": summ["ap50"]}
            rows[0]["ap50_after_control"] = summ["ap50"]
            print("control", json.dumps(control, default=float), flush=True)
        for name, (start, ratio, layers) in recipes.items():
            t = time.perf_counter()
            model = copy.deepcopy(start)
            mask: Optional[Any] = None
            if ratio is None:
                cost = count_flops_params(model, (1, 3, size, size))
                ks = {"dense_flops": cost.flops, "paper_flops": cost.flops, "dense_params": cost.params,
                      "paper_params": cost.params, "kernels_zeroed": 0, "layers": []}
            else:
                mask, ks = sparsify_dimension_matched(model, ratio, size, layer_names=layers)
            row = {"variant": name, "kernel_ratio": ratio or 0.0, "kernel_layers": len(ks["layers"]),
                   **{k: ks[k] for k in ("dense_flops", "paper_flops", "dense_params", "paper_params",
                                         "kernels_zeroed")}}
            row["ap50_cut"] = summary_ap(evaluate_model(model, test_set, size, cfg["eval"]))
            row["ap50_after"] = row["ap50_cut"]
            if args.finetune_epochs > 0:
                summ = train(model, train_set, Path(tmp) / name.replace("@", "_").replace("+", "_"), ft_cfg,
                             eval_set=test_set, eval_cfg=cfg["eval"], resume=False, progress=False, after_step=mask)
                row["ap50_after"] = summ["ap50"]
            if mask is not None:  # the zeros are still there after the fine-tune
                mods = dict(model.named_modules())
                row["kernels_zero_at_end"] = sum(int((mods[n].weight.abs().sum((2, 3)) == 0).sum())
                                                 for n in ks["layers"])
            row["seconds"] = time.perf_counter() - t
            rows.append(row)
            models[name] = model
            print(json.dumps(row, default=float), flush=True)

    torch.set_num_threads(args.latency_threads)
    facts: Dict[str, Dict[str, Any]] = {}
    time_variants(models, lambda m, path: export_onnx(fuse_model(m), path, size, opset=13, classes=classes), rows,
                  size, args.warmup, args.latency_rounds, args.latency_threads,
                  on_export=lambda name, path: facts.__setitem__(name, onnx_file_facts(path)))
    for r in rows:
        r.update(facts[r["variant"]])
        r["paper_flop_ratio"] = base_cost.flops / r["paper_flops"]
        r["dense_flop_ratio"] = base_cost.flops / r["dense_flops"]
        r["speedup_over_paper_flop_ratio"] = r["speedup"] / r["paper_flop_ratio"]
    result = {"environment": environment(args.latency_threads), "torch_threads": args.threads,
              "checkpoint": str(ckpt_path), "round_to": args.round_to,
              "finetune_epochs": args.finetune_epochs, "finetune_warmup_epochs": args.finetune_warmup,
              "finetune_seed": ft_cfg.get("seed"), "latency_rounds": args.latency_rounds, "warmup": args.warmup,
              "note": PAPER_ONLY_NOTE, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "kernel_sparsity.json", json.dumps(result, indent=2, default=float).encode())

    ft = args.finetune_epochs
    lines = ["| variant | GFLOPs dense (runs) | GFLOPs on paper | params dense (M) | params on paper (M) | "
             "ONNX MB | ONNX gzip MB | AP50 after the cut | AP50 after " + (f"{ft}-epoch fine-tune" if ft else "—")
             + " | ORT CPU median ms | speed-up | paper FLOP ratio | speed-up / paper FLOP ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        after = r.get("ap50_after_control", r["ap50_after"]) if ft else None
        lines.append(
            f"| {r['variant']} | {r['dense_flops'] / 1e9:.3f} | {r['paper_flops'] / 1e9:.3f} | "
            f"{r['dense_params'] / 1e6:.3f} | {r['paper_params'] / 1e6:.3f} | {r['onnx_bytes'] / 1e6:.2f} | "
            f"{r['onnx_gzip_bytes'] / 1e6:.2f} | {r['ap50_cut']['overall']:.4f} | "
            + (f"{after['overall']:.4f}" if after else "—")
            + f" | {r['ort_cpu']['median_ms']:.2f} | {r['speedup']:.2f}x | {r['paper_flop_ratio']:.2f} | "
              f"{r['speedup_over_paper_flop_ratio']:.2f} |")
    env = result["environment"]
    md = (f"# Kernel-level sparsity (M4's fine granularity) against channel pruning\n\nBaseline `{ckpt_path.name}`. "
          f"Latency: ONNX Runtime {env['onnxruntime']} CPU, {args.latency_threads} thread(s), batch 1, "
          f"{args.latency_rounds} interleaved rounds after {args.warmup} warm-up runs, the fused deployed ONNX of "
          f"every variant, on "
          f"{env['cpu']} ({env['platform']}). Channels rounded to {args.round_to}. "
          + (f"Fine-tune: {ft} epochs, {args.finetune_warmup:g}-epoch warm-up, seed {ft_cfg.get('seed')}, zeroed "
             "kernels kept zero (the baseline row's fine-tuned AP50 is the control: the same fine-tune, nothing cut)."
             if ft else "No fine-tune.")
          + f" {PAPER_ONLY_NOTE[0].upper() + PAPER_ONLY_NOTE[1:]}.\n\n" + "\n".join(lines)
          + "\n\n![speed-up against paper FLOP ratio](kernel_sparsity.png)\n")
    atomic_write_bytes(out / "kernel_sparsity.md", md.encode())

    def draw(ax):
        top = max(r["paper_flop_ratio"] for r in rows) * 1.1
        ax.plot([1, top], [1, top], "k--", lw=1, label="speed-up = paper FLOP ratio")
        for r in rows:
            ax.scatter(r["paper_flop_ratio"], r["speedup"], s=40)
            ax.annotate(r["variant"], (r["paper_flop_ratio"], r["speedup"]), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
        ax.set_xlabel("FLOP ratio on paper (baseline / variant, zeros not counted)")
        ax.set_ylabel("measured ONNX Runtime CPU speed-up")
        ax.legend(loc="upper left")

    save_plot(out / "kernel_sparsity.png", draw, figsize=(7, 5))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
