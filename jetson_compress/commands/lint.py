"""``jetson-compress lint MODEL.onnx [--json OUT]``: will TensorRT 8.2 (Jetson Nano) parse this ONNX file?

Prints one line per finding (severity, rule, node, message). Exit status: 0 when there is no error (warnings
allowed unless ``--strict``), 1 when the model violates a rule, 2 when the file cannot be read.
Host side: imports export.lint (onnx) when it runs, never torch; registering the subcommand imports nothing heavy.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("lint", help="check an ONNX model against TensorRT 8.2 (Jetson Nano)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL.onnx", help="ONNX file to check")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="also write the report as JSON here")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 1 on any finding)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from export.lint import LintError, lint_onnx, write_report
    from jetson_compress.cli import UserError

    try:
        report = lint_onnx(args.model)
    except LintError as exc:
        raise UserError(str(exc)) from None
    print(report.format())
    if args.json_out:
        write_report(report, args.json_out)
    failed = not report.ok or (args.strict and bool(report.warnings))
    if failed:
        what = f"{len(report.errors)} error(s)" if not report.ok else f"{len(report.warnings)} warning(s) (--strict)"
        print(f"error: {args.model}: {what}; fix them before building a TensorRT 8.2 engine", file=sys.stderr)
    return 1 if failed else 0
