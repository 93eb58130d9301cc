"""Does the channel rounding of a pruned model decide its CPU speed? Same method and FLOPs, different ``--round-to``.

For every FLOPs target and rounding: the shipped baseline pruned by information richness (M1, no fine-tune: latency
does not depend on the weights), exported through the deploy path (fused, ``export_onnx``), and all variants timed
with ONNX Runtime CPU in the same run, interleaved, after warm-up, once per thread count. Next to the measured
speed-up: the FLOPs a kernel that pads every channel count up to a block of 16 really computes (ONNX Runtime's NCHWc
convolutions on AVX-512 CPUs; 8 on AVX2) — the cost model that explains the gap.

    python benchmarks/channel_alignment.py --data ../shared/data/pedestrians/VOCdevkit

Results: JSON, Markdown and a plot in ``benchmarks/results/channel_alignment.*``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import environment, load_baseline, save_plot, time_variants  # noqa: E402
from compress.checkpoint import atomic_write_bytes  # noqa: E402
from compress.flops import count_flops_params  # noqa: E402
from compress.fusion import fuse_model  # noqa: E402
from compress.prune_pipeline import calibration_batch, plan_pruning, prune_detector  # noqa: E402
from compress.voc import VOCDataset  # noqa: E402
from export.onnx_export import export_onnx  # noqa: E402


def _up(n: int, block: int) -> int:
    return -(-n // block) * block


def padded_macs(model: nn.Module, size: int, block: int) -> int:
    """Multiply-adds of every convolution with its channel counts padded up to ``block`` (input and output; a
    depthwise one pads its channels), plus the other layers' MACs unchanged — what a blocked kernel computes."""
    convs: List[tuple] = []

    def hook(mod, inp, out):
        convs.append((mod, out.shape[2] * out.shape[3]))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    total = count_flops_params(model, (1, 3, size, size)).macs
    for m, hw in convs:
        kk = m.kernel_size[0] * m.kernel_size[1]
        exact = hw * m.out_channels * (m.in_channels // m.groups) * kk
        if m.groups == m.in_channels == m.out_channels:
            padded = hw * _up(m.out_channels, block) * kk
        elif m.groups == 1:
            cin = m.in_channels if m.in_channels < block else _up(m.in_channels, block)  # the RGB stem is not padded
            padded = hw * _up(m.out_channels, block) * cin * kk
        else:
            padded = exact
        total += padded - exact
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="VOCdevkit root")
    ap.add_argument("--checkpoint", help="baseline checkpoint (default: shipped)")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--round-to", type=int, nargs="+", default=[8, 16], dest="round_to")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--block", type=int, default=16, help="channel block of the padded-FLOPs model")
    ap.add_argument("--latency-rounds", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    cfg, ckpt_path, baseline, ckpt, root = load_baseline(args.checkpoint, args.data, max(args.threads))
    size = baseline.config.input_size
    calib = calibration_batch(VOCDataset(root, "trainval", ckpt["classes"]), size, 64)
    models: Dict[str, Any] = {"baseline": baseline}
    base = count_flops_params(baseline, (1, 3, size, size))
    base_padded = padded_macs(baseline, size, args.block)
    info: Dict[str, Dict[str, Any]] = {"baseline": {"target": 0.0, "round_to": None, "flops": base.flops,
                                                    "padded_macs_ratio": 1.0}}
    for target in args.targets:
        for r in args.round_to:
            name = f"richness@{int(target * 100)}/round{r}"
            dec = plan_pruning(baseline, "richness", target, calib, round_to=r, min_channels=r)
            pruned = prune_detector(baseline, dec, "richness", {"kind": "flops", "reduction": target}, r)["model"]
            cost = count_flops_params(pruned, (1, 3, size, size))
            counts = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
            info[name] = {"target": target, "round_to": r, "flops": cost.flops,
                          "flops_reduction": 1 - cost.flops / base.flops,
                          "padded_macs_ratio": base_padded / padded_macs(pruned, size, args.block),
                          "convs": len(counts), f"convs_not_multiple_of_{args.block}":
                              sum(1 for c in counts if c % args.block)}
            models[name] = pruned
            print(name, json.dumps(info[name]), flush=True)

    classes = list(ckpt["classes"])
    timings: Dict[int, List[Dict[str, Any]]] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows = [{"variant": k} for k in models]
        time_variants(models, lambda m, path: export_onnx(fuse_model(m), path, size, opset=13, classes=classes),
                      rows, size, args.warmup, args.latency_rounds, threads)
        timings[threads] = rows
    table = []
    for name, meta in info.items():
        row = dict(meta, variant=name, flop_ratio=base.flops / meta["flops"])
        for threads, rows in timings.items():
            r = next(x for x in rows if x["variant"] == name)
            row[f"threads{threads}"] = {"median_ms": r["ort_cpu"]["median_ms"], "p90_ms": r["ort_cpu"]["p90_ms"],
                                        "speedup": r["speedup"], "speedup_over_flop_ratio": r["speedup"] / row["flop_ratio"]}
        table.append(row)
    result = {"environment": environment(max(args.threads)), "checkpoint": str(ckpt_path), "block": args.block,
              "latency_rounds": args.latency_rounds, "warmup": args.warmup, "rows": table}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "channel_alignment.json", json.dumps(result, indent=2, default=float).encode())
    head = ("| variant | FLOPs (G) | FLOP ratio | padded-MAC ratio (block "
            f"{args.block}) | convs not ×{args.block} | "
            + " | ".join(f"{t} thr: median ms | {t} thr: speed-up | {t} thr: speed-up / FLOP ratio" for t in args.threads)
            + " |")
    lines = [head, "|" + "---|" * (5 + 3 * len(args.threads))]
    for row in table:
        cells = [row["variant"], f"{row['flops'] / 1e9:.3f}", f"{row['flop_ratio']:.2f}",
                 f"{row['padded_macs_ratio']:.2f}", str(row.get(f"convs_not_multiple_of_{args.block}", "—"))]
        for t in args.threads:
            x = row[f"threads{t}"]
            cells += [f"{x['median_ms']:.2f}", f"{x['speedup']:.2f}x", f"{x['speedup_over_flop_ratio']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    env = result["environment"]
    md = (f"# Channel rounding and CPU speed\n\nBaseline `{ckpt_path.name}` pruned by information richness (no "
          f"fine-tune), fused and exported as deployed. ONNX Runtime {env['onnxruntime']} CPU, batch 1, "
          f"{args.latency_rounds} interleaved rounds after {args.warmup} warm-up runs per thread count, on "
          f"{env['cpu']} ({env['platform']}, {env['cpus']} CPUs).\n\n" + "\n".join(lines)
          + "\n\n![speed-up over FLOP ratio](channel_alignment.png)\n")
    atomic_write_bytes(out / "channel_alignment.md", md.encode())
    pruned_rows = [r for r in table if r["round_to"]]
    width = 0.8 / len(args.threads)

    def draw(ax):
        for i, t in enumerate(args.threads):
            ax.bar([j + i * width for j in range(len(pruned_rows))],
                   [r[f"threads{t}"]["speedup_over_flop_ratio"] for r in pruned_rows], width, label=f"{t} thread(s)")
        ax.axhline(0.85, color="k", ls="--", lw=1, label="0.85")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(pruned_rows))])
        ax.set_xticklabels([r["variant"] for r in pruned_rows], rotation=15, fontsize=8)
        ax.set_ylabel("ORT CPU speed-up / FLOP ratio")
        ax.legend()

    save_plot(out / "channel_alignment.png", draw, figsize=(8, 4.5))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
