"""Head-to-head of channel pruning methods on the default baseline, against Torch-Pruning.

For every FLOPs target and method: prune, AP50 before fine-tune, fine-tune (same epochs and schedule for all; ``--distill W`` adds
head-output distillation from the unpruned baseline, for every method alike),
AP50 after, FLOPs, params, wall time, and ONNX Runtime CPU latency — all variants timed in the same run,
interleaved round by round, median of the repeats after warm-up.

    python benchmarks/prune_compare.py --data ../shared/data/pedestrians/VOCdevkit --finetune-epochs 5

Methods: ours (``richness``, ``richness+comp`` with least-squares compensation; ``+lat``: the latency-aware
allocation, ``--latency-tilt`` with the ``ort-cpu`` latency model; ``+streams``: the backbone's residual streams at
strides 4 and 8 kept whole, ``--keep-whole fine-streams`` for that method alone; ``+cap``: the capacity tilt,
``--capacity-tilt``; ``+gl1``: channels chosen by the group-aggregated magnitude, ``compress.criteria.group_l1``;
``+rec``: channels chosen for least-squares reconstruction, ``compress.criteria.reconstruction``),
``l1`` (uniform L1; ``l1+comp+streams``: uniform keep ratio with ours' compensation and fine streams — the
allocation ablation of ``richness+comp+streams``; ``l1+comp+streams+gl1``: the same with the group-aggregated
magnitude, Torch-Pruning's uniform allocation and importance with ours' compensation and fine streams),
``bn`` (BN slimming), ``torch-pruning`` (the torch-pruning package, MagnitudeImportance(p=1), uniform ratio found
by bisection to land as close as its rounding allows to ours' FLOPs, the same ``--round-to``; ``torch-pruning+streams``:
the same with the fine streams kept whole, given to it as ignored layers — the fairness check of ours' ``+streams``),
``unpruned`` (the control: the baseline itself given the same fine-tune, once, whatever the targets — how much of
a pruned model's AP50 after a long fine-tune is the extra training rather than recovery from the cut).
Results: JSON, Markdown table and a plot of AP50
against latency in ``benchmarks/results/``.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import environment, export_detector, load_baseline, save_plot, time_variants  # noqa: E402
from compress.checkpoint import atomic_write_bytes  # noqa: E402
from compress.flops import count_flops_params  # noqa: E402
from compress.inference import evaluate_model, summary_ap  # noqa: E402
from compress.prune_pipeline import calibration_batch, expand_keep_whole, plan_pruning, prune_detector  # noqa: E402
from compress.train import resolve_device, train  # noqa: E402
from compress.voc import VOCDataset  # noqa: E402

METHODS = ["richness", "richness+comp", "richness+streams", "richness+comp+streams", "richness+comp+streams+cap",
           "richness+comp+streams+gl1", "richness+comp+streams+rec", "richness+lat",
           "richness+comp+lat", "entropy",
           "entropy+comp", "l1", "l1+comp+streams", "l1+comp+streams+gl1", "bn", "torch-pruning",
           "torch-pruning+streams", "unpruned"]
# entropy (M1's alpha = 1), the '+streams' structure, the capacity tilt and the unpruned control: on request
DEFAULT_METHODS = [m for m in METHODS if not m.startswith("entropy") and "streams" not in m and m != "unpruned"]


def torch_pruning_at(model, ratio: float, size: int, round_to: int = 8, keep_whole: Sequence[str] = ()):
    """A copy of ``model`` cut by Torch-Pruning at one uniform ``ratio`` (L1 magnitude importance, prediction convs
    ignored); returns it and its MACs. ``keep_whole``: convolutions given to Torch-Pruning as ignored layers too — it
    leaves alone every channel group that would cut their output channels (the fine streams, as ours keep them)."""
    import torch_pruning as tp

    m = copy.deepcopy(model).eval()
    modules = dict(m.named_modules())
    ignored = [h.pred for h in m.heads] + [modules[n] for n in keep_whole]
    pruner = tp.pruner.MetaPruner(m, torch.zeros(1, 3, size, size), importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=ignored, round_to=round_to)
    pruner.step()
    return m, count_flops_params(m, (1, 3, size, size)).macs


def torch_pruning_variant(model, target_macs: int, size: int, round_to: int = 8, keep_whole: Sequence[str] = ()):
    """Torch-Pruning with L1 magnitude importance; the uniform ratio is bisected to land as close to ``target_macs`` as
    its rounding allows (either side: a uniform ratio moves the FLOPs in steps of up to several points)."""
    lo, hi = 0.0, 0.95
    tried = []
    for _ in range(14):
        mid = 0.5 * (lo + hi)
        m, macs = torch_pruning_at(model, mid, size, round_to, keep_whole)
        tried.append((abs(macs - target_macs), macs, mid, m))
        if macs <= target_macs:
            hi = mid
        else:
            lo = mid
    _, macs, ratio, m = min(tried, key=lambda t: (t[0], -t[1]))
    return m, macs, ratio


def method_options(method: str, latency_model: str, latency_tilt: float, capacity_tilt: float):
    """One of our method names (``base+option+...``) as (base method, its options, the plan_pruning keywords they
    set); ``comp`` and ``streams`` are applied by the caller."""
    base_method, *options = method.split("+")
    unknown = set(options) - {"comp", "streams", "lat", "cap", "gl1", "rec"}
    if unknown:
        raise ValueError(f"method {method!r}: unknown option(s) {sorted(unknown)}")
    kw: Dict[str, Any] = {}
    if "lat" in options:
        kw.update(latency_model=latency_model, latency_tilt=latency_tilt)
    if "cap" in options:
        kw["capacity_tilt"] = capacity_tilt
    if "gl1" in options:
        kw["channel_criterion"] = "group-l1"
    if "rec" in options:
        kw["channel_criterion"] = "reconstruction"
    return base_method, options, kw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="VOCdevkit root")
    ap.add_argument("--checkpoint", help="baseline checkpoint (default: shipped)")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=METHODS)
    ap.add_argument("--finetune-epochs", type=int, default=5)
    ap.add_argument("--finetune-lr", type=float,
                    help="peak learning rate of the fine-tune (default: the configuration's train.lr)")
    ap.add_argument("--finetune-warmup", type=float, default=0.0, metavar="EPOCHS",
                    help="linear learning-rate warm-up of the fine-tune, in epochs (0, the default: none; the "
                         "build's fine-tune uses the configuration's train.warmup_epochs, 1)")
    ap.add_argument("--distill", type=float, default=0.0, metavar="W",
                    help="fine-tune every method with W x head-output distillation from the unpruned baseline "
                         "(0, the default: the detection loss alone)")
    ap.add_argument("--seed", type=int, help="seed of the fine-tune (default: the configuration's train.seed)")
    ap.add_argument("--freeze-blocks", type=int, metavar="N",
                    help="backbone blocks kept frozen in the fine-tune, for every method alike (default: the "
                         "configuration's train.freeze_blocks, as the baseline was trained)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="configuration override, as for jetson-compress (e.g. train.workers=4, train.device=cuda); "
                         "train.time_budget_s fits the first fine-tune's epochs to that budget and gives every later "
                         "variant the same number of epochs")
    ap.add_argument("--latency-rounds", type=int, default=100, help="0: no latency measurement (e.g. on a machine "
                                                                     "shared with other jobs)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--round-to", type=int, default=8,
                    help="kept channels rounded to this multiple, for every method including Torch-Pruning "
                         "(8: the project default, TensorRT FP16; 16: ONNX Runtime's NCHWc block on AVX-512 CPUs)")
    ap.add_argument("--latency-tilt", type=float, default=0.5, metavar="BETA",
                    help="latency tilt of the '+lat' methods (keep ratio x (seconds per MAC / median) ** -BETA)")
    ap.add_argument("--latency-model", default="ort-cpu", help="latency model of the '+lat' methods")
    ap.add_argument("--capacity-tilt", type=float, default=0.25, metavar="GAMMA",
                    help="capacity tilt of the '+cap' methods (keep ratio x (MACs per parameter / median) ** -GAMMA: "
                         "the same FLOPs cut, more of it at high resolution, more parameters kept)")
    ap.add_argument("--min-channels", type=int, metavar="N",
                    help="our methods: no channel group cut below N channels (default: --round-to); Torch-Pruning "
                         "has no such floor")
    ap.add_argument("--keep-whole", nargs="+", default=[], metavar="CONV",
                    help="our methods: the channel groups these convolutions open keep every channel (e.g. "
                         "backbone.features.2.conv.2, the stride-4 residual stream); Torch-Pruning is unchanged")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "prune_compare"))
    args = ap.parse_args(argv)

    if args.min_channels is not None and args.min_channels < 1:
        ap.error(f"--min-channels {args.min_channels}: must be >= 1")
    min_ch = args.min_channels or args.round_to
    cfg, ckpt_path, baseline, ckpt, root = load_baseline(args.checkpoint, args.data, args.threads, args.set)
    size = baseline.config.input_size
    train_set = VOCDataset(root, "trainval", ckpt["classes"])
    test_set = VOCDataset(root, "test", ckpt["classes"])
    calib = calibration_batch(train_set, size, 64)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: List[Dict[str, Any]] = []
    models: Dict[str, Any] = {"baseline": baseline}
    base_cost = count_flops_params(baseline, (1, 3, size, size))
    # One fine-tune configuration for every method: the baseline's training settings, the warm-up asked for (none by
    # default), the overrides given.
    overrides = {"lr": args.finetune_lr, "seed": args.seed, "freeze_blocks": args.freeze_blocks}
    ft_cfg = dict(cfg["train"], epochs=args.finetune_epochs, warmup_epochs=args.finetune_warmup,
                  distill_weight=args.distill,
                  **{k: v for k, v in overrides.items() if v is not None})
    t = time.perf_counter()
    base_ap = summary_ap(evaluate_model(baseline, test_set, size, cfg["eval"]))["overall"]
    rows.append({"variant": "baseline", "method": "baseline", "target": 0.0, "flops": base_cost.flops,
                 "params": base_cost.params, "ap50_before": base_ap, "ap50_after": base_ap,
                 "seconds_prune": 0.0, "seconds_finetune": 0.0, "seconds_eval": time.perf_counter() - t})
    for target in args.targets:
        ours_macs = None
        for method in args.methods:
            if method == "unpruned" and target != args.targets[0]:
                continue  # the control has no target: fine-tuned once
            name = "unpruned" if method == "unpruned" else f"{method}@{int(target * 100)}"
            print(f"== {name}", flush=True)
            t = time.perf_counter()
            plan = None  # ours: the prune plan goes into the fine-tuned checkpoint (jetson-compress eval loads it)
            if method == "unpruned":
                pruned = copy.deepcopy(baseline)  # the control: what the same fine-tune does without any cut
            elif method.startswith("torch-pruning"):
                if ours_macs is None:
                    dec = plan_pruning(baseline, "l1", target, calib, round_to=args.round_to,
                                       min_channels=min_ch)
                    ours_macs = dec["allocation"]["macs"]
                tp_whole = expand_keep_whole(baseline, ["fine-streams"]) if method.endswith("+streams") else []
                pruned, _, ratio = torch_pruning_variant(baseline, ours_macs, size, round_to=args.round_to,
                                                         keep_whole=tp_whole)
            else:
                base_method, options, lat = method_options(method, args.latency_model, args.latency_tilt,
                                                           args.capacity_tilt)
                whole = expand_keep_whole(baseline, args.keep_whole + (["fine-streams"] if "streams" in options else []))
                dec = plan_pruning(baseline, base_method, target, calib, round_to=args.round_to,
                                   min_channels=min_ch, keep_whole=whole, **lat)
                tgt = {"kind": "flops", "reduction": target, **lat}
                if whole:
                    tgt["keep_whole"] = whole
                res = prune_detector(baseline, dec, base_method, tgt,
                                     args.round_to, compensate_with=calib[:32] if "comp" in options else None)
                pruned, plan = res["model"], res["plan"]
                ours_macs = ours_macs or res["plan"]["achieved"]["macs"]
            t_prune = time.perf_counter() - t
            cost = count_flops_params(pruned, (1, 3, size, size))
            ap_before = summary_ap(evaluate_model(pruned, test_set, size, cfg["eval"]))["overall"]
            t = time.perf_counter()
            ap_after = ap_before
            if args.finetune_epochs > 0:
                summ = train(pruned, train_set, out / "runs" / name.replace("@", "_"), ft_cfg, eval_set=test_set,
                             eval_cfg=cfg["eval"], resume=False, progress=False,
                             teacher=baseline if args.distill > 0 else None,
                             checkpoint_extra={"prune_plan": plan} if plan else None)
                ap_after = summ["ap50"]["overall"]
                # A time budget is spent once, on the first variant; all others get the epochs it bought.
                ft_cfg.update(epochs=summ["epochs"], time_budget_s=None)
            rows.append({"variant": name, "method": method, "target": 0.0 if method == "unpruned" else target,
                         "flops": cost.flops,
                         "params": cost.params, "ap50_before": ap_before, "ap50_after": ap_after,
                         "seconds_prune": t_prune, "seconds_finetune": time.perf_counter() - t,
                         "finetune_epochs": ft_cfg["epochs"]})
            models[name] = pruned
            print(json.dumps(rows[-1], default=float), flush=True)

    timed = args.latency_rounds > 0
    if timed:
        time_variants(models, lambda m, path: export_detector(m, path, size), rows, size, args.warmup,
                      args.latency_rounds, args.threads)
    for r in rows:
        r["flop_ratio"] = base_cost.flops / r["flops"]
        if timed:
            r["speedup_over_flop_ratio"] = r["speedup"] / r["flop_ratio"]
    result = {"environment": environment(args.threads), "checkpoint": str(ckpt_path),
              "finetune_epochs": ft_cfg["epochs"],
              "finetune_epochs_requested": args.finetune_epochs, "distill_weight": args.distill,
              "finetune_device": str(resolve_device(ft_cfg.get("device"))), "overrides": args.set,
              "finetune_seed": ft_cfg["seed"], "finetune_lr": ft_cfg["lr"], "round_to": args.round_to,
              "freeze_blocks": ft_cfg["freeze_blocks"], "finetune_warmup_epochs": ft_cfg["warmup_epochs"],
              "ema_decay": ft_cfg.get("ema_decay"),
              "latency_tilt": args.latency_tilt, "latency_model": args.latency_model,
              "capacity_tilt": args.capacity_tilt,
              "keep_whole": expand_keep_whole(baseline, args.keep_whole),
              "min_channels": min_ch,
              "rows": rows}
    atomic_write_bytes(out / "prune_compare.json", json.dumps(result, indent=2, default=float).encode())
    lines = ["| variant | FLOPs (G) | params (M) | AP50 before FT | AP50 after FT | ORT CPU median (ms) | speed-up | "
             "speed-up / FLOP ratio | prune s | fine-tune s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = (f"{r['ort_cpu']['median_ms']:.2f} | {r['speedup']:.2f}x | {r['speedup_over_flop_ratio']:.2f}" if timed
               else "not timed | | ")
        lines.append(f"| {r['variant']} | {r['flops'] / 1e9:.3f} | {r['params'] / 1e6:.3f} | {r['ap50_before']:.4f} | "
                     f"{r['ap50_after']:.4f} | {lat} | {r['seconds_prune']:.1f} | {r['seconds_finetune']:.0f} |")
    env = result["environment"]
    timing = (f"Latency: ONNX Runtime {env['onnxruntime']} CPU, {args.threads} threads, batch 1, {args.latency_rounds} "
              f"interleaved rounds after {args.warmup} warm-up runs" if timed else "Latency not measured")
    md = (f"# Channel pruning head-to-head\n\nBaseline `{ckpt_path.name}`, fine-tune {result['finetune_epochs']} epochs "
          f"on {result['finetune_device']} for every method"
          f"{f' (with {args.distill:g} x distillation from the baseline)' if args.distill else ''}, the first "
          f"{result['freeze_blocks']} backbone blocks frozen in it, kept channels rounded to multiples of "
          f"{args.round_to}{f', ours never below {min_ch}' if min_ch != args.round_to else ''}"
          f"{'; ours keep whole the groups of ' + ', '.join(args.keep_whole) if args.keep_whole else ''}"
          f"{'; overrides ' + ', '.join(args.set) if args.set else ''}. {timing}, on {env['cpu']} "
          f"({env['platform']}).\n\n" + "\n".join(lines) + "\n\n![AP50 against latency](prune_compare.png)\n")
    atomic_write_bytes(out / "prune_compare.md", md.encode())

    def draw(ax):
        for method in ["baseline"] + args.methods:
            pts = [r for r in rows if r["method"] == method]
            ax.plot([r["ort_cpu"]["median_ms"] if timed else r["flops"] / 1e9 for r in pts],
                    [r["ap50_after"] for r in pts], "o-", label=method)
        ax.set_xlabel("ONNX Runtime CPU latency, median (ms)" if timed else "GFLOPs")
        ax.set_ylabel("person AP50 (VOC07) after fine-tune")
        ax.grid(alpha=0.3)
        ax.legend()

    save_plot(out / "prune_compare.png", draw)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
