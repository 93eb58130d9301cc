"""``jetson-compress export``: checkpoint(s) -> deploy bundle (ONNX per variant + manifest.json) for the Nano.

    jetson-compress export [--checkpoint CKPT] --bundle DIR [--variant NAME=CKPT ...] [--opset 13]

The baseline is ``--checkpoint`` (default: the shipped baseline); each ``--variant NAME=CKPT`` adds another
(e.g. ``pruned=runs/prune/final.pt``). Every variant is exported to a static-shape ONNX (opset 13, or 11), checked
against torch with ONNX Runtime, linted for TensorRT 8.2 and measured (FLOPs, params); the bundle is written only
when all of that passes.

Pruned variants are made by channel surgery, never by a re-export: a ``--variant`` checkpoint that carries a prune
plan (what ``jetson-compress prune`` writes) is scattered back into its dense graph, fused, exported and cut with its
plan (`export.slim`), and the slim ONNX is verified against the pruned torch model (<= 1e-4). ``--plan PLAN`` adds a
variant ``pruned`` cut from the baseline's own dense ONNX by a channel plan (no fine-tuned weights), verified
against the baseline with the removed channels masked.
Host side: torch, onnx and onnxruntime are imported when the command runs, so registering it costs nothing.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

from runtime.bundle import DEFAULT_NMS

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="export checkpoints to a deploy bundle (ONNX + manifest) for the Nano",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="baseline checkpoint (default: the shipped baseline)")
    p.add_argument("--plan", help="add variant 'pruned': channel surgery of the baseline's dense ONNX with this "
                                  "prune plan (plan.json from `jetson-compress prune`)")
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle folder to write (new, empty, or a bundle)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=CKPT",
                   help="add a variant from another checkpoint, e.g. pruned=runs/prune/final.pt (repeatable)")
    p.add_argument("--opset", type=int, default=13, choices=(11, 13), help="ONNX opset (default 13)")
    p.add_argument("--score-threshold", type=float, default=DEFAULT_NMS["score_threshold"],
                   help=f"NMS score threshold written to the manifest (default {DEFAULT_NMS['score_threshold']})")
    p.add_argument("--iou-threshold", type=float, default=DEFAULT_NMS["iou_threshold"],
                   help=f"NMS IoU threshold (default {DEFAULT_NMS['iou_threshold']})")
    p.add_argument("--max-detections", type=int, default=DEFAULT_NMS["max_detections"],
                   help=f"detections kept per image (default {DEFAULT_NMS['max_detections']})")
    p.add_argument("--pre-nms-topk", type=int, default=DEFAULT_NMS["pre_nms_topk"],
                   help=f"candidates entering NMS (default {DEFAULT_NMS['pre_nms_topk']})")
    p.set_defaults(func=run)


def parse_variants(specs: List[str]) -> List[Tuple[str, Path]]:
    from jetson_compress.cli import UserError

    out: List[Tuple[str, Path]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--variant {spec!r}: expected NAME=CHECKPOINT, e.g. pruned=runs/prune/final.pt")
        if not _NAME.match(name):
            raise UserError(f"--variant {spec!r}: the name may use letters, digits, '_', '-', '.'")
        if name == "baseline" or name in [n for n, _ in out]:
            raise UserError(f"--variant {spec!r}: variant {name!r} is given twice (baseline is --checkpoint)")
        out.append((name, Path(path)))
    return out


def run(args: argparse.Namespace) -> int:
    from jetson_compress.cli import UserError

    import tempfile

    from compress.checkpoint import default_checkpoint, load_model
    from export.bundle import BundleWriteError, write_bundle
    from export.onnx_export import ExportError
    from export.surgery import SurgeryError

    sources: List[Tuple[str, Path]] = [("baseline", Path(args.checkpoint) if args.checkpoint
                                        else default_checkpoint())]
    sources += parse_variants(args.variant)
    if args.plan and "pruned" in [n for n, _ in sources]:
        raise UserError("--plan makes the variant 'pruned'; name the --variant differently")
    variants: Dict[str, Any] = {}
    for name, path in sources:
        model, ckpt = load_model(path)
        variants[name] = (model, ckpt)
    nms = {"score_threshold": args.score_threshold, "iou_threshold": args.iou_threshold,
           "max_detections": args.max_detections, "pre_nms_topk": args.pre_nms_topk, "class_wise": True}
    source_names = {name: str(path) for name, path in sources}
    try:
        with tempfile.TemporaryDirectory(prefix="jc-export-") as tmp:
            onnx_files = _slim_variants(variants, sources, args, Path(tmp))
            if args.plan:
                variants["pruned"], onnx_files["pruned"] = _plan_variant(variants["baseline"], args, Path(tmp))
                source_names["pruned"] = f"{source_names['baseline']} cut by {args.plan}"
            manifest = write_bundle(args.bundle, variants, nms, opset=args.opset, sources=source_names,
                                    onnx_files=onnx_files)
    except (BundleWriteError, ExportError, SurgeryError) as exc:
        raise UserError(str(exc)) from None
    except ValueError as exc:  # bad NMS settings or metadata, named by write_bundle's checks
        raise UserError(f"{args.bundle}: {exc}") from None
    print(f"{args.bundle}: bundle written (opset {args.opset}, input {manifest['input']['shape']}, "
          f"classes {manifest['classes']})")
    base = manifest["variants"].get("baseline")
    for name, entry in manifest["variants"].items():
        ratio = f"  {entry['flops'] / base['flops']:.2f}x baseline FLOPs" if base and name != "baseline" else ""
        print(f"  {name:<10} {entry['file']:<20} {entry['bytes'] / 1e6:7.2f} MB  {entry['flops'] / 1e9:6.2f} GFLOPs  "
              f"{entry['params'] / 1e6:5.2f} M params{ratio}")
    return 0


def _slim_variants(variants: Dict[str, Any], sources: List[Tuple[str, Path]], args: argparse.Namespace,
                   tmp: Path) -> Dict[str, Path]:
    """Slim ONNX (channel surgery, verified) for every non-baseline variant whose checkpoint carries a plan."""
    from export.slim import slim_onnx_from_checkpoint

    out: Dict[str, Path] = {}
    for name, path in sources:
        if name == "baseline" or not variants[name][1].get("prune_plan"):
            continue
        out[name] = tmp / f"{name}.onnx"
        slim_onnx_from_checkpoint(path, out[name], tmp / f"{name}.dense", opset=args.opset)
    return out


def _plan_variant(baseline: Tuple[Any, Dict[str, Any]], args: argparse.Namespace, tmp: Path):
    """The baseline's dense ONNX cut by ``--plan``; the torch model of the same cut gives FLOPs and parameters."""
    import copy

    from compress.fusion import fuse_model
    from compress.pruning import PlanError, apply_layer_plan, load_plan
    from export.onnx_export import export_onnx
    from export.surgery import surgery
    from jetson_compress.cli import UserError

    model, ckpt = baseline
    try:
        plan = load_plan(args.plan)
    except PlanError as exc:
        raise UserError(str(exc)) from None
    if plan.get("removed_layers") or plan.get("resconv_layers"):
        raise UserError(f"--plan {args.plan}: the plan removes layers, which cannot be cut from an ONNX graph; "
                        f"export the pruned checkpoint instead: --variant pruned=PRUNED.pt")
    try:
        pruned = apply_layer_plan(copy.deepcopy(model), plan["layers"]).eval()
    except PlanError as exc:
        raise UserError(f"--plan {args.plan}: does not fit the baseline: {exc}") from None
    dense = tmp / "baseline.dense.onnx"
    export_onnx(fuse_model(model), dense, model.config.input_size, opset=args.opset, classes=ckpt["classes"],
                mean=ckpt.get("mean"), std=ckpt.get("std"))
    slim = tmp / "pruned.onnx"
    report = surgery(dense, slim, plan=plan, verify=True)
    print(f"--plan: channel surgery {report['params_before'] / 1e6:.2f} M -> {report['params_after'] / 1e6:.2f} M "
          f"params, verified against the masked baseline (max rel {report['verify']['max_rel']:.2g})")
    return (pruned, ckpt), slim
