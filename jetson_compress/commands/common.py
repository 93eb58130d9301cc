"""Argument groups shared by several subcommands, and the helpers that turn them into configuration."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, Union

from jetson_compress.config import load_config, override


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML configuration (defaults: configs/default.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one configuration value (repeatable)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="VOCdevkit root (else $JETSON_COMPRESS_DATA, else data/VOCdevkit)")
    p.add_argument("--year", help="VOC year folder, e.g. VOC2007 (auto-detected when there is one)")
    p.add_argument("--classes", help="comma-separated class subset (default: person)")
    p.add_argument("--skip-bad", action="store_true", default=None,
                   help="skip bad images (malformed XML, missing/unreadable image...) with a counted warning")


def resolve(args: argparse.Namespace) -> Dict[str, Any]:
    cfg = load_config(getattr(args, "config", None), getattr(args, "set", []) or [])
    override(cfg, "data.root", getattr(args, "data", None))
    override(cfg, "data.year", getattr(args, "year", None))
    classes = getattr(args, "classes", None)
    if classes:
        override(cfg, "data.classes", [c.strip() for c in classes.split(",") if c.strip()])
    override(cfg, "data.skip_bad", getattr(args, "skip_bad", None))
    return cfg


def open_split(cfg: Dict[str, Any], split: str):
    from compress.voc import VOCDataset, resolve_data_root

    d = cfg["data"]
    return VOCDataset(resolve_data_root(d.get("root")), split, d["classes"], year=d.get("year"),
                      skip_bad=bool(d.get("skip_bad")))


def prepare_output_dir(path: Union[str, Path]) -> Path:
    """Create the output folder ``path`` (and its parents) and check that a file can be written in it; a
    ``UserError`` naming the folder otherwise (a path below a regular file, no permission, read-only disk)."""
    from jetson_compress.cli import UserError

    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{out}: output folder is not writable ({exc.strerror})") from None
    return out
