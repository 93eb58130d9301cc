"""Atomic file writes and file hashes for the export stages (host side; stdlib only, no torch, no onnx)."""
from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "sha256_bytes", "sha256_file"]


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path`` (readers never see half)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # the folder's name is taken by a file
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(path.parent)) from None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not exc.filename:
            # A failed write (disk full, I/O error) carries no file name: name the file we were writing.
            raise OSError(exc.errno, f"{exc.strerror or exc} (an earlier file of that name is left unchanged)",
                          str(path)) from exc
        raise


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: os.PathLike | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
