"""``jetson-compress data``: fetch datasets (``data download voc2007``) and list the known ones (``data list``).

The work is done by :mod:`compress.download` (standard library only), imported when the command runs so that
registering this subcommand costs nothing. Errors become one message on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable

__all__ = ["register", "run"]

PROG = "jetson-compress data"


def register(subparsers: Any) -> None:
    """Add the ``data`` subcommand (with its ``download`` and ``list`` actions) to ``subparsers``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "data", help="download and check datasets",
        description="Download datasets into a folder the other commands read with --data.")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True

    download = actions.add_parser(
        "download", help="download, verify and extract a dataset",
        description="Download a dataset's archives (resumable, MD5-verified) into ROOT/downloads and extract "
                    "them into ROOT (voc2007 -> ROOT/VOCdevkit/VOC2007). Run it again to resume.")
    download.add_argument("name", metavar="NAME", help="dataset to download, e.g. voc2007 (see 'data list')")
    download.add_argument("--root", type=Path, default=Path("data"),
                          help="folder for downloads/ and the extracted dataset (default: %(default)s)")
    download.add_argument("--mirror", dest="mirrors", action="append", metavar="URL", default=None,
                          help="base URL that holds the archives; repeat to give several, tried in order "
                               "instead of the built-in list")
    download.add_argument("--no-resume", dest="resume", action="store_false",
                          help="discard partial downloads instead of resuming them")
    download.add_argument("--timeout", type=float, default=30.0, metavar="S",
                          help="seconds to wait for a connection or for data (default: %(default)s)")
    download.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    download.add_argument("--force", action="store_true",
                          help="re-verify and re-extract archives that were already extracted")

    actions.add_parser("list", help="list the datasets that can be downloaded")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``data ACTION``; return the exit code (0 ok, 2 error, 130 interrupted)."""
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {"download": _run_download, "list": _run_list}
    return handlers[args.data_command](args)


def _run_download(args: argparse.Namespace) -> int:
    from compress import download as dl

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # no-op when the CLI configured logging
    try:
        year_dir = dl.download_dataset(args.name, args.root, mirrors=args.mirrors, resume=args.resume,
                                       timeout=args.timeout, progress=args.progress, force=args.force)
    except dl.DataError as exc:
        print(f"{PROG} download: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permission denied: the message names the file
        print(f"{PROG} download: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} download: interrupted; partial downloads are kept in {args.root / 'downloads'} and "
              f"resumed by running the same command again", file=sys.stderr)
        return 130
    devkit = year_dir.parent
    print(f"{args.name} ready in {year_dir}")
    print(f"use it with --data {devkit} or {dl.DATA_ENV_VAR}={devkit}")
    return 0


def _run_list(args: argparse.Namespace) -> int:
    from compress import download as dl

    for name, spec in sorted(dl.DATASETS.items()):
        sizes = [a.size for a in spec.archives if a.size is not None]
        total = f"{sum(sizes) / 2**30:.2f} GiB" if len(sizes) == len(spec.archives) else "size unknown"
        print(f"{name}: {spec.description} ({total})")
        for archive in spec.archives:
            print(f"  {archive.filename}  md5 {archive.md5 or '-'}")
        for mirror in spec.mirrors:
            print(f"  mirror {mirror}")
    return 0
