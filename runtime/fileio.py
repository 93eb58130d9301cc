"""Atomic file writes and file hashes: the one implementation, for the device side and the host alike
(``compress.checkpoint`` re-exports it).

Device module: Python 3.6 syntax, standard library only; never imports torch or onnx.
A file is written to a temporary name in the same folder, flushed to disk, then renamed over the target, so a reader
sees either the old file or the new one, never a partial one (an interrupted engine build leaves no broken engine).
"""

import errno
import hashlib
import json
import os
import tempfile

__all__ = ["atomic_write_bytes", "atomic_write_json", "sha256_file", "sha256_bytes"]


def atomic_write_bytes(path, data):
    """Write ``data`` (bytes-like) to ``path`` atomically, creating its folder; returns the path as a string.

    The file gets the permissions a plain ``open()`` would give (0666 less the umask). On failure nothing is left
    behind and an earlier file of that name is unchanged; an ``OSError`` that names no file (disk full, I/O error)
    is raised again naming ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:  # the folder's name is taken by a file
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", folder) from None
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:  # owns fd from here: closed whatever fails below
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
            handle.write(memoryview(data))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and not exc.filename:
            raise OSError(exc.errno, "{} (an earlier file of that name is left unchanged)".format(
                exc.strerror or exc), path) from exc
        raise
    return path


def atomic_write_json(path, obj):
    """Write ``obj`` as indented JSON (keys in insertion order) atomically."""
    text = json.dumps(obj, indent=2) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def sha256_bytes(data):
    return hashlib.sha256(memoryview(data)).hexdigest()


def sha256_file(path, chunk_size=1 << 20):
    """Hex sha256 of a file, read in chunks (ONNX files can be tens of MB on a 4 GB device)."""
    digest = hashlib.sha256()
    with open(os.fspath(path), "rb") as handle:
        while True:
            chunk = handle.read(chunk_size)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()
