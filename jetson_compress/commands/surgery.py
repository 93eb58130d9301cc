"""``jetson-compress surgery IN.onnx --out OUT.onnx (--plan PLAN.json | --ratio R) [--verify] [--report R.json]``:
physically remove channels from an ONNX model.

``--plan`` applies a prune plan from ``jetson-compress prune`` to the dense ONNX export of the pruned weights;
``--ratio R`` analyses the graph itself and removes the fraction R of the channels of every prunable channel group
(lowest filter L1 norm first, kept counts rounded to ``--round-to``). Channel groups that cannot be pruned safely
(graph inputs/outputs, unsupported ops, reshapes that mix channels) are left alone and listed. ``--verify`` runs
ONNX Runtime on the slim model and on the original with the removed channels masked, on random inputs (and on
``--images``), and fails above the tolerance (1e-4 fp32, 1e-2 fp16).

Exit status: 0 on success, 1 when verification fails, 2 on a user error (unreadable file, bad plan).
Host side: imports export.surgery (onnx, numpy) when it runs; registering the subcommand imports nothing heavy.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, List


def register(sub: Any) -> None:
    p = sub.add_parser("surgery", help="remove channels from an ONNX model (plan-driven or by ratio)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="IN.onnx", help="ONNX model to slim")
    p.add_argument("--out", required=True, metavar="OUT.onnx", help="where to write the slim model")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--plan", metavar="PLAN.json", help="prune plan written by `jetson-compress prune`")
    how.add_argument("--ratio", type=float, metavar="R", help="fraction of channels to remove per group, in [0, 1)")
    p.add_argument("--criterion", default="l1", choices=["l1"], help="channel importance (with --ratio)")
    p.add_argument("--round-to", type=int, default=8, help="round kept channel counts to a multiple of this")
    p.add_argument("--verify", action="store_true", help="compare with the masked original on ONNX Runtime")
    p.add_argument("--images", nargs="*", default=[], metavar="IMG",
                   help="real images (files or folders) to verify with, besides random inputs")
    p.add_argument("--atol", type=float, default=None, help="verification tolerance (default 1e-4 fp32, 1e-2 fp16)")
    p.add_argument("--report", metavar="REPORT.json", help="write the surgery report as JSON here")
    p.set_defaults(func=run)


def _image_paths(items: List[str]) -> List[Path]:
    paths: List[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")))
        else:
            paths.append(path)
    return paths


def run(args: argparse.Namespace) -> int:
    import onnx

    from export.surgery import SurgeryError, VerificationError, surgery
    from export.verify import image_inputs
    from jetson_compress.cli import UserError

    if args.ratio is not None and args.plan is not None:  # pragma: no cover - argparse forbids it
        raise UserError("give --plan or --ratio, not both")
    feeds = None
    try:
        if args.images:
            feeds = image_inputs(onnx.load(args.model, load_external_data=False), _image_paths(args.images))
        report = surgery(args.model, args.out, ratio=args.ratio, plan=args.plan, round_to=args.round_to,
                         criterion=args.criterion, verify=args.verify, verify_inputs=feeds, atol=args.atol,
                         report_path=args.report)
    except VerificationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except SurgeryError as exc:
        raise UserError(str(exc)) from None
    ch = report["channels"]
    print(f"{args.model} -> {args.out}: channels {ch['total']} -> {ch['kept']}, params {report['params_before']} -> "
          f"{report['params_after']}, MACs {report['macs_before']} -> {report['macs_after']}, "
          f"{report['bytes_before']} -> {report['bytes_after']} bytes; {report['groups_pruned']} of "
          f"{report['groups_total']} channel groups pruned")
    for row in report["left_alone"]:
        print(f"  left alone: group {row['group']} ({row['channels']} channels, producers "
              f"{', '.join(row['producers']) or '-'}): {'; '.join(row['reasons'])}")
    if "verify" in report:
        v = report["verify"]
        print(f"  verified on {v['inputs']} input(s): max abs diff {v['max_abs']:.3g}, max rel {v['max_rel']:.3g} "
              f"(tolerance {v['tolerance']}); masking changed the original's outputs by up to "
              f"{v['masked_vs_original_max_abs']:.3g}")
    return 0
