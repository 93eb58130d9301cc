"""Atomic file writes and file hashes for the device side.

Device module: Python 3.6 syntax, standard library only; never imports torch or onnx.
A file is written to a temporary name in the same folder, flushed to disk, then renamed over the target, so a reader
sees either the old file or the new one, never a partial one (an interrupted engine build leaves no broken engine).
"""

import hashlib
import json
import os

__all__ = ["atomic_write_bytes", "atomic_write_json", "sha256_file", "sha256_bytes"]


def atomic_write_bytes(path, data):
    """Write ``data`` (bytes-like) to ``path`` atomically; returns the path as a string."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        os.makedirs(folder)
    tmp = "{}.tmp-{}".format(path, os.getpid())
    try:
        with open(tmp, "wb") as handle:
            handle.write(memoryview(data))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
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
