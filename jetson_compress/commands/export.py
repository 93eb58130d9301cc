"""``jetson-compress export``: checkpoint(s) -> deploy bundle (ONNX per variant + manifest.json) for the Nano.

    jetson-compress export [--checkpoint CKPT] --bundle DIR [--variant NAME=CKPT ...] [--opset 13]

The baseline is ``--checkpoint`` (default: the shipped baseline); each ``--variant NAME=CKPT`` adds another
(e.g. ``pruned=runs/prune/final.pt``). Every variant is exported to a static-shape ONNX (opset 13, or 11), checked
against torch with ONNX Runtime, linted for TensorRT 8.2 and measured (FLOPs, params); the bundle is written only
when all of that passes. ``--plan`` (channel surgery on the dense ONNX) needs the pruning stage.
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
    p.add_argument("--plan", help="prune plan for channel surgery on the dense ONNX (needs the pruning stage)")
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

    if args.plan:
        raise UserError(f"--plan {args.plan}: channel surgery from a prune plan needs the pruning stage, which is "
                        f"not in this version; export a physically pruned checkpoint with --variant pruned=CKPT")
    from compress.checkpoint import default_checkpoint, load_model
    from export.bundle import BundleWriteError, write_bundle
    from export.onnx_export import ExportError

    sources: List[Tuple[str, Path]] = [("baseline", Path(args.checkpoint) if args.checkpoint
                                        else default_checkpoint())]
    sources += parse_variants(args.variant)
    variants: Dict[str, Any] = {}
    for name, path in sources:
        model, ckpt = load_model(path)
        variants[name] = (model, ckpt)
    nms = {"score_threshold": args.score_threshold, "iou_threshold": args.iou_threshold,
           "max_detections": args.max_detections, "pre_nms_topk": args.pre_nms_topk, "class_wise": True}
    try:
        manifest = write_bundle(args.bundle, variants, nms, opset=args.opset,
                                sources={name: str(path) for name, path in sources})
    except (BundleWriteError, ExportError) as exc:
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
