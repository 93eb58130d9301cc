"""``jetson-compress build``: the main job — prune, export, bundle, benchmark and report, end to end."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from jetson_compress.commands.common import add_config_args, add_data_args, prepare_output_dir, resolve


def register(sub) -> None:
    p = sub.add_parser("build", help="the whole pipeline: baseline -> prune -> export -> bundle -> benchmark -> report",
                       description=__doc__)
    add_data_args(p)
    add_config_args(p)
    p.add_argument("--checkpoint", help="baseline checkpoint (default: the shipped baseline)")
    p.add_argument("--train-baseline", action="store_true", help="train the baseline instead of using a checkpoint")
    p.add_argument("--out", default="runs/build", help="run folder (default runs/build)")
    p.add_argument("--force", action="store_true", help="re-run every stage even if up to date")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from jetson_compress.build import run_build
    from jetson_compress.config import save_resolved

    cfg = resolve(args)
    out = prepare_output_dir(args.out)
    save_resolved(cfg, out)
    t0 = time.perf_counter()
    report = run_build(cfg, out, checkpoint=Path(args.checkpoint) if args.checkpoint else None,
                       train_baseline=args.train_baseline, force=args.force)
    print(report["console_table"])
    print(f"report: {out / 'report.md'}  bundle: {report['bundle']}  wall time {time.perf_counter() - t0:.0f} s")
    return 0
