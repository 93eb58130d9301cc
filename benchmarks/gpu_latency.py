"""GPU latency of the baseline against pruned detectors, side by side in one run: PyTorch on CUDA, FP16, conv-BN
folded, channels-last, export-mode forward (network + box decoding, what the TensorRT engine runs before NMS).

Variants: the baseline, ours (``richness`` with compensation) and Torch-Pruning (L1, uniform ratio bisected to ours'
MACs), at each ``--targets``. Each is captured once per batch size as a CUDA graph, so host-side launch overhead is
out of the figure; a sample is the mean of ``--replays`` back-to-back graph replays between CUDA events; variants are
interleaved round by round, ``--rounds`` samples after ``--warmup`` and the median is reported.

A large data-centre GPU is not a Jetson Nano: at batch 1 such a small network keeps few of its multiprocessors busy,
so the figure there is bound by the chain of kernels, not by FLOPs; larger batches show the compute-bound regime.
Needs a CUDA GPU (the device tool's machine); not part of CI.

    python benchmarks/gpu_latency.py --data ../shared/data/pedestrians/VOCdevkit --out benchmarks/results/gpu_latency
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import environment, load_baseline, save_plot  # noqa: E402
from benchmarks.prune_compare import torch_pruning_variant  # noqa: E402
from compress.checkpoint import atomic_write_bytes  # noqa: E402
from compress.flops import count_flops_params  # noqa: E402
from compress.fusion import fuse_model  # noqa: E402
from compress.prune_pipeline import calibration_batch, plan_pruning, prune_detector  # noqa: E402
from compress.voc import VOCDataset  # noqa: E402


def build_variants(baseline, calib: torch.Tensor, targets, round_to: int):
    """``{"baseline", "richness+comp@T", "torch-pruning@T"}`` for every target T (percent of FLOPs removed)."""
    size = baseline.config.input_size
    models = {"baseline": baseline}
    for target in targets:
        dec = plan_pruning(baseline, "richness", target, calib, round_to=round_to, min_channels=round_to)
        res = prune_detector(baseline, dec, "richness", {"kind": "flops", "reduction": target}, round_to,
                             compensate_with=calib[:32])
        models[f"richness+comp@{int(target * 100)}"] = res["model"]
        tp, _, _ = torch_pruning_variant(baseline, res["plan"]["achieved"]["macs"], size, round_to=round_to)
        models[f"torch-pruning@{int(target * 100)}"] = tp
    return models


def deploy_copy(model):
    """The forward the engine runs: conv-BN folded, export mode (decoded boxes and scores), eval."""
    fused = fuse_model(copy.deepcopy(model).eval())
    fused.export_mode = True
    return fused


def graph_runner(model, batch: int, size: int, dtype):
    """A CUDA graph of ``model``'s forward on a static input; returns ``replay()``."""
    x = torch.randn(batch, 3, size, size, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):  # warm-up before capture (cuDNN picks its kernels here)
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        model(x)
    return graph.replay


def time_graphs(runners, replays: int, warmup: int, rounds: int):
    """Median milliseconds per forward of every runner, interleaved round by round."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = {k: [] for k in runners}
    for r in range(warmup + rounds):
        for name, replay in runners.items():
            torch.cuda.synchronize()
            start.record()
            for _ in range(replays):
                replay()
            end.record()
            end.synchronize()
            if r >= warmup:
                samples[name].append(start.elapsed_time(end) / replays)
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "n": len(v)}
            for k, v in samples.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="VOCdevkit root (calibration images for ours' pruning)")
    ap.add_argument("--checkpoint", help="baseline checkpoint (default: shipped)")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--replays", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=4, help="CPU threads for the pruning")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_latency"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_latency.py needs a CUDA GPU; torch sees none", file=sys.stderr)
        return 2

    cfg, ckpt_path, baseline, ckpt, root = load_baseline(args.checkpoint, args.data, args.threads)
    size = baseline.config.input_size
    calib = calibration_batch(VOCDataset(root, "trainval", ckpt["classes"]), size, 64)
    models = build_variants(baseline, calib, args.targets, args.round_to)
    rows, ready = [], {}
    for name, m in models.items():  # the baseline first
        cost = count_flops_params(m, (1, 3, size, size))
        rows.append({"variant": name, "flops": cost.flops, "params": cost.params,
                     "flop_ratio": (rows[0]["flops"] if rows else cost.flops) / cost.flops})
        ready[name] = deploy_copy(m).to("cuda", dtype=torch.float16, memory_format=torch.channels_last)
    t = time.perf_counter()
    for batch in args.batches:
        lat = time_graphs({k: graph_runner(m, batch, size, torch.float16) for k, m in ready.items()},
                          args.replays, args.warmup, args.rounds)
        base = lat["baseline"]["median_ms"]
        for r in rows:
            r[f"b{batch}"] = dict(lat[r["variant"]], speedup=base / lat[r["variant"]]["median_ms"],
                                  images_per_second=1000.0 * batch / lat[r["variant"]]["median_ms"])
    env = dict(environment(args.threads), gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
               cudnn=torch.backends.cudnn.version())
    result = {"environment": env, "checkpoint": str(ckpt_path), "data": str(root), "precision": "float16",
              "batches": args.batches, "replays": args.replays, "warmup": args.warmup, "rounds": args.rounds,
              "seconds_timing": time.perf_counter() - t, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "gpu_latency.json", json.dumps(result, indent=2, default=float).encode())
    head = "| variant | GFLOPs | FLOP ratio | " + " | ".join(f"batch {b}: ms (speed-up)" for b in args.batches) + " |"
    lines = [head, "|---" * (3 + len(args.batches)) + "|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['flops'] / 1e9:.3f} | {r['flop_ratio']:.2f}x | " + " | ".join(
            f"{r[f'b{b}']['median_ms']:.3f} ({r[f'b{b}']['speedup']:.2f}x)" for b in args.batches) + " |")
    md = (f"# GPU FP16 latency, baseline against pruned\n\nPyTorch {env['torch']} (CUDA {env['cuda']}, cuDNN "
          f"{env['cudnn']}) on {env['gpu']}: FP16, conv-BN folded, channels-last, export-mode forward as CUDA graphs; "
          f"median of {args.rounds} interleaved rounds (each the mean of {args.replays} replays) after {args.warmup} "
          f"warm-up rounds. Not a Jetson Nano: see the docstring of `benchmarks/gpu_latency.py`.\n\n"
          + "\n".join(lines) + "\n\n![speed-up against FLOP ratio](gpu_latency.png)\n")
    atomic_write_bytes(out / "gpu_latency.md", md.encode())

    def draw(ax):
        for b in args.batches:
            ax.plot([r["flop_ratio"] for r in rows], [r[f"b{b}"]["speedup"] for r in rows], "o", label=f"batch {b}")
        lim = max(r["flop_ratio"] for r in rows) * 1.05
        ax.plot([1, lim], [1, lim], "k--", lw=0.8, label="speed-up = FLOP ratio")
        ax.set_xlabel("FLOP ratio (baseline / variant)")
        ax.set_ylabel("FP16 GPU speed-up over the baseline")
        ax.grid(alpha=0.3)
        ax.legend()

    save_plot(out / "gpu_latency.png", draw)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
