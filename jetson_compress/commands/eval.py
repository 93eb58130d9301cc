"""``jetson-compress eval``: per-class AP50 (VOC07 11-point and all-point) of a checkpoint on a VOC split."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from jetson_compress.commands.common import add_config_args, add_data_args, open_split, resolve


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (default: the shipped baseline)", description=__doc__)
    p.add_argument("--checkpoint", help="checkpoint to evaluate (default: the shipped baseline)")
    p.add_argument("--split", default=None, help="split to evaluate (default: data.test_split, i.e. test)")
    p.add_argument("--json", dest="json_out", help="write the full result as JSON here")
    add_data_args(p)
    add_config_args(p)
    p.set_defaults(func=run)


def format_table(result: dict) -> str:
    rows = [("", "AP50 VOC07 11-pt", "AP50 all-point", "GT boxes")]
    v07, allp = result["voc07_11point"], result["all_point"]
    for cls, ap in v07["ap"].items():
        rows.append((cls, f"{ap:.4f}", f"{allp['ap'][cls]:.4f}", str(v07["npos"][cls])))
    if len(v07["ap"]) > 1:
        rows.append(("mAP", f"{v07['map']:.4f}", f"{allp['map']:.4f}", ""))
    for src, res in sorted(result.get("per_source", {}).items()):
        first = next(iter(res["voc07_11point"]["ap"]))
        rows.append((f"  source {src}", f"{res['voc07_11point']['ap'][first]:.4f}",
                     f"{res['all_point']['ap'][first]:.4f}", str(res["voc07_11point"]["npos"][first])))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def run(args: argparse.Namespace) -> int:
    from compress.checkpoint import atomic_write_bytes, default_checkpoint, load_model
    from compress.inference import evaluate_model

    cfg = resolve(args)
    ckpt_path = Path(args.checkpoint) if args.checkpoint else default_checkpoint()
    model, ckpt = load_model(ckpt_path)
    if not args.classes:
        cfg["data"]["classes"] = list(ckpt["classes"])
    dataset = open_split(cfg, args.split or cfg["data"]["test_split"])
    if list(dataset.classes) != list(ckpt["classes"]):
        from jetson_compress.cli import UserError

        raise UserError(f"{ckpt_path}: trained for classes {ckpt['classes']}, asked to evaluate {list(dataset.classes)}")
    result = evaluate_model(model, dataset, int(ckpt["input_size"]), cfg["eval"], progress=True)
    result["checkpoint"] = str(ckpt_path)
    result["data"] = str(dataset.year_dir)
    print(f"{ckpt_path} on {dataset.year_dir} split '{dataset.split}' ({len(dataset)} images, "
          f"{result['timing']['seconds']:.1f} s, {result['timing']['images_per_second']:.1f} images/s)")
    print(format_table(result))
    if args.json_out:
        atomic_write_bytes(args.json_out, json.dumps(result, indent=2, default=_json_default).encode())
    return 0


def _json_default(o):
    if isinstance(o, float) and math.isnan(o):
        return None
    return float(o)
