"""The ``jetson-compress`` command: a registry of subcommands, one module each in ``jetson_compress.commands``.

A subcommand module exposes ``register(subparsers)``; it adds its parser and sets ``func=run`` where
``run(args) -> int``. A subcommand whose optional dependency is missing reports that in one sentence instead of
breaking the others.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from jetson_compress.version import __version__

COMMAND_MODULES = ["data", "train", "eval", "prune", "export", "lint", "build", "surgery"]


class UserError(Exception):
    """An error caused by the user's input: printed as one message, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jetson-compress",
        description="Prune, fuse and export a pedestrian detector for the Jetson Nano (TensorRT FP16).",
    )
    parser.add_argument("--version", action="version", version=f"jetson-compress {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"jetson_compress.commands.{name}")
        module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - user-facing errors are ValueError/OSError subclasses with a message
        from compress.checkpoint import CheckpointError
        from compress.voc import DataError
        from compress.pruning import PlanError
        from jetson_compress.config import ConfigError
        from compress.train import DeviceError
        from jetson_compress.stages import StageError

        known = (DataError, CheckpointError, ConfigError, PlanError, DeviceError, FileNotFoundError, PermissionError)
        if isinstance(exc, StageError):
            # A stage failed: say which, and the user-facing cause when it is one of ours.
            cause = exc.__cause__
            if isinstance(cause, known) or isinstance(cause, OSError):
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(f"error: {exc}", file=sys.stderr)
            raise
        if isinstance(exc, known):
            if isinstance(exc, OSError) and exc.filename and exc.strerror:
                print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
            else:
                print(f"error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError) and exc.filename:
            print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
