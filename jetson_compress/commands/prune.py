"""``jetson-compress prune``: structured channel pruning (M1/M4), layer pruning (M5) or both, of a detector
checkpoint (default: the shipped baseline), with a choice of retraining (plain, graft, distill, adversarial)."""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from jetson_compress.commands.common import add_config_args, add_data_args, open_split, prepare_output_dir, resolve

# The keys of compress.criteria.LATENCY_MODELS (a test keeps them equal), so registering the command imports no torch.
LATENCY_MODEL_NAMES = ("ort-cpu", "jetson-nano-fp16")
# compress.prune_pipeline.CHANNEL_CRITERIA, for the same reason (a test keeps them equal).
CHANNEL_CRITERION_NAMES = ("l1", "entropy", "group-l1", "reconstruction")


def register(sub) -> None:
    p = sub.add_parser("prune", help="prune channels to a FLOPs/params target", description=__doc__)
    p.add_argument("--checkpoint", help="checkpoint to prune (default: the shipped baseline)")
    add_data_args(p)
    add_config_args(p)
    tgt = p.add_mutually_exclusive_group()
    tgt.add_argument("--target-flops", type=float, help="fraction of FLOPs to remove, e.g. 0.5 (default)")
    tgt.add_argument("--target-params", type=float, help="fraction of parameters to remove instead")
    tgt.add_argument("--target-latency", type=float,
                     help="fraction of modelled latency (--latency-model) to remove instead")
    p.add_argument("--method", choices=["richness", "entropy", "l1", "bn", "layer", "layer+richness"],
                   default="richness",
                   help="keep-ratio method: layer information richness (M1), entropy only, uniform L1, BN slimming; "
                        "layer: remove ResConv layers/blocks (M5); layer+richness: depth and width, one target")
    p.add_argument("--alpha", type=float, default=0.5, help="richness = alpha*entropy + (1-alpha)*avg L1")
    p.add_argument("--round-to", type=int, default=8, help="round kept channels to a multiple of this")
    p.add_argument("--min-channels", type=int, default=8, help="never keep fewer channels in a group")
    p.add_argument("--latency-tilt", type=float, default=0.0, metavar="BETA",
                   help="latency-aware allocation (richness/entropy): keep ratios x (modelled seconds per MAC of the "
                        "group / median) ** -BETA: more speed for the same FLOPs target, at some AP50 (0: off, the default)")
    p.add_argument("--latency-model", choices=sorted(LATENCY_MODEL_NAMES), default="ort-cpu",
                   help="latency model of --target-latency and --latency-tilt (ort-cpu: fitted on ONNX Runtime here; "
                        "jetson-nano-fp16: datasheet peaks, not measured)")
    p.add_argument("--keep-whole", nargs="+", default=[], metavar="CONV",
                   help="channel methods: the channel groups these convolutions open keep every channel and the "
                        "target is met by the others; 'fine-streams' names the backbone's residual streams at "
                        "strides 4 and 8 (backbone.features.2.conv.2 and .4.conv.2: 24 and 32 channels that carry "
                        "fine detail to the stride-8 head); a name that opens no prunable group is an error that "
                        "lists the ones that do")
    p.add_argument("--channel-criterion", choices=CHANNEL_CRITERION_NAMES, default="group-l1",
                   help="which channels a group keeps once its count is set: group-l1 (the default), the magnitude "
                        "over every layer that writes or reads the channels (producers, BatchNorms, depthwise and "
                        "consuming convolutions); l1, the producers' filter L1 norm alone; the per-channel "
                        "activation entropy; or reconstruction, the channels from which least squares best rebuilds "
                        "what the next 1x1 layers read on the calibration images (pair with --compensate; on the "
                        "detector it keeps more AP50 than group-l1 at -68%% and -70%% FLOPs and less at -50%%, "
                        "benchmarks/results/prune_compare/README.md)")
    p.add_argument("--compensate", action="store_true", help="least-squares re-fit of consumer layers (M6)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune epochs after pruning")
    p.add_argument("--calibration-images", type=int, default=64)
    p.add_argument("--sparsity-epochs", type=int, default=0,
                   help="M4: epochs of adaptive-L1 sparsity training on BN factors before pruning (pair with --method bn)")
    p.add_argument("--sparsity-lambda", type=float, default=1e-4, help="base L1 coefficient of sparsity training")
    p.add_argument("--kernel-sparsity", type=float, default=0.0, metavar="R",
                   help="M4's fine granularity after the channel cut: zero this fraction of the k x k kernels of "
                        "every dimension-matched convolution (the residual streams' producers) and keep them zero "
                        "through the fine-tune. Saves parameters and FLOPs on paper only: TensorRT and ONNX Runtime "
                        "run the same dense kernels, so it changes no latency (metrics.json: kernel_sparsity)")
    p.add_argument("--finetune", choices=["plain", "graft", "distill", "adversarial"], default="plain",
                   help="retraining after pruning: plain, grafting (M2), distillation from the baseline, adversarial "
                        "alignment + architecture selection (M3); needs --finetune-epochs or --finetune-seconds")
    p.add_argument("--finetune-seconds", type=float, help="wall-clock budget of the retraining instead of epochs")
    p.add_argument("--layer-share", type=float, default=0.5,
                   help="layer+richness: fraction of the FLOPs target taken by removing layers (rest: channels)")
    p.add_argument("--layer-lambda", type=float, default=1e-3,
                   help="L1 coefficient on the ResConv layer scales during --sparsity-epochs (layer methods)")
    p.add_argument("--layer-threshold", type=float,
                   help="remove every layer whose score is under this instead of meeting the FLOPs target")
    p.add_argument("--layer-score", choices=["scale", "effective"], default="effective",
                   help="rank layers by |s| (scale) or by |s| * branch/input norm on calibration images (effective)")
    p.add_argument("--graft-every", type=int, default=20, help="graft: steps between two grafting operations")
    p.add_argument("--no-eval", action="store_true", help="skip AP evaluation (faster)")
    p.add_argument("--out", required=True, help="output folder: pruned.pt, plan.json, metrics.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from compress.checkpoint import default_checkpoint, load_model
    from compress.prune_pipeline import run_prune
    from jetson_compress.cli import UserError
    from jetson_compress.config import save_resolved

    kind, value = next(((k, v) for k, v in (("params", args.target_params), ("latency", args.target_latency))
                        if v is not None), ("flops", args.target_flops))
    value = 0.5 if value is None else value
    if not 0.0 < value < 1.0:
        raise UserError(f"--target-{kind} {value}: must be a fraction of {kind} to remove, strictly between 0 and 1")
    for flag, n in (("--round-to", args.round_to), ("--min-channels", args.min_channels)):
        if n < 1:
            raise UserError(f"{flag} {n}: must be >= 1")
    layer_method = args.method.startswith("layer")
    if layer_method and (kind != "flops" or args.compensate):
        raise UserError(f"--method {args.method}: only a FLOPs target (--target-flops) and no --compensate")
    if args.keep_whole and layer_method:
        raise UserError(f"--keep-whole applies to the channel methods, not --method {args.method}")
    if args.latency_tilt < 0:
        raise UserError(f"--latency-tilt {args.latency_tilt}: must be >= 0")
    if args.latency_tilt and args.method not in ("richness", "entropy"):
        raise UserError(f"--latency-tilt applies to --method richness or entropy, not {args.method}")
    if not 0.0 < args.layer_share <= 1.0:
        raise UserError(f"--layer-share {args.layer_share}: must be in (0, 1]")
    if args.finetune != "plain" and args.finetune_epochs <= 0 and not args.finetune_seconds:
        raise UserError(f"--finetune {args.finetune} needs --finetune-epochs or --finetune-seconds")
    if args.finetune_seconds is not None and args.finetune_seconds <= 0:
        raise UserError("--finetune-seconds must be > 0")
    if not 0.0 <= args.kernel_sparsity < 1.0:
        raise UserError(f"--kernel-sparsity {args.kernel_sparsity}: must be a fraction of kernels in [0, 1)")
    if args.kernel_sparsity and (layer_method or args.finetune != "plain"):
        raise UserError("--kernel-sparsity applies to the channel methods with the plain fine-tune (--finetune plain)")
    t0 = time.perf_counter()
    cfg = resolve(args)
    ckpt_path = Path(args.checkpoint) if args.checkpoint else default_checkpoint()
    model, ckpt = load_model(ckpt_path)
    if ckpt.get("prune_plan"):
        raise UserError(f"{ckpt_path}: already a pruned checkpoint; prune the dense baseline instead")
    ckpt["_sha256"] = hashlib.sha256(ckpt_path.read_bytes()).hexdigest()
    if args.keep_whole:
        from compress.prune_pipeline import resolve_keep_whole

        try:
            resolve_keep_whole(model, args.keep_whole)
        except ValueError as exc:
            raise UserError(f"--keep-whole: {exc}") from None
    if not args.classes:
        cfg["data"]["classes"] = list(ckpt["classes"])
    train_set = open_split(cfg, cfg["data"]["train_split"])
    test_set = None if args.no_eval else open_split(cfg, cfg["data"]["test_split"])
    out = prepare_output_dir(args.out)
    save_resolved(cfg, out)  # only once the inputs are known good: a failed run keeps an earlier run's copy
    baseline_ap = None
    ckpt_metrics = ckpt.get("metrics") or {}
    stored = ckpt_metrics.get("ap50_voc07")
    # The stored figure was measured on the same split file when the checkpoint was made; it describes these weights
    # only if it was measured on them as stored: float32, or fp16-rounded where `train --half` says so (checkpoints
    # made before it did, like the shipped one, carry the figure of the float32 weights before rounding).
    measured_on = ckpt_metrics.get("ap50_voc07_weights", "float32")
    if (test_set is not None and stored and measured_on == ckpt.get("dtype", "float32")
            and ckpt.get("split_hashes", {}).get(test_set.split) == test_set.split_sha256()):
        baseline_ap = stored
    res = run_prune(model, ckpt, train_set, test_set, out, method=args.method, target_reduction=value,
                    target_kind=kind, round_to=args.round_to, min_channels=args.min_channels, alpha=args.alpha,
                    compensate_flag=args.compensate, finetune_epochs=args.finetune_epochs, train_cfg=cfg["train"],
                    eval_cfg=cfg["eval"], resolved_config=cfg, calibration_images=args.calibration_images,
                    sparsity_epochs=args.sparsity_epochs, sparsity_lambda=args.sparsity_lambda,
                    baseline_ap=baseline_ap, latency_model=args.latency_model, latency_tilt=args.latency_tilt,
                    keep_whole=args.keep_whole, channel_criterion=args.channel_criterion, finetune=args.finetune,
                    finetune_seconds=args.finetune_seconds, kernel_sparsity=args.kernel_sparsity,
                    retrain_options={"graft_every": args.graft_every, "round_to": args.round_to,
                                     "min_channels": args.min_channels},
                    layer_options={"layer_share": args.layer_share, "layer_lambda": args.layer_lambda,
                                   "layer_threshold": args.layer_threshold, "layer_score": args.layer_score}
                    if layer_method else None)
    m = res["metrics"]
    print(json.dumps({k: m[k] for k in m if k.startswith("ap50") or k in ("flops_reduction", "params_reduction",
                                                                  "modelled_latency_reduction")},
                     indent=2, default=float))
    print(f"wrote {out / 'pruned.pt'}, {out / 'plan.json'}, {out / 'metrics.json'} in {time.perf_counter() - t0:.1f} s")
    return 0
