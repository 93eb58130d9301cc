"""Engine cache: one serialized engine per (ONNX sha256, TensorRT version, GPU name, precision, workspace).

Device module: Python 3.6 syntax; tensorrt and pycuda are imported lazily; never imports torch or onnx.

An engine is valid only for the TensorRT version and GPU that built it, and differs with precision and workspace,
so all five are in the key; the ONNX file is identified by content (sha256), not by name. The file name carries
the readable parts plus a digest of the whole key; a JSON sidecar records the key. Engines are written atomically,
so an interrupted build never leaves a half-written engine that a later run would pick up.
"""

import collections
import hashlib
import json
import os
import re

from runtime.fileio import atomic_write_bytes, atomic_write_json, sha256_file
from runtime.lazy import require
from trt.compat import import_tensorrt, trt_version, version_string

__all__ = [
    "PRECISIONS", "EngineCacheKey", "make_cache_key", "cache_key_digest", "engine_file_name", "EngineCache",
    "gpu_name", "engine_for_onnx",
]

PRECISIONS = ("fp16", "fp32")

EngineCacheKey = collections.namedtuple(
    "EngineCacheKey", ["onnx_sha256", "trt_version", "gpu_name", "precision", "workspace_mib"])

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def make_cache_key(onnx_sha256, trt_version_tuple, gpu, precision, workspace_mib):
    """Validated `EngineCacheKey`; ``trt_version_tuple`` is an integer tuple such as (8, 2, 1, 8)."""
    onnx_sha256 = str(onnx_sha256).lower()
    if not _SHA256.match(onnx_sha256):
        raise ValueError("onnx_sha256 must be 64 hex digits; got {!r}".format(onnx_sha256))
    version = tuple(int(v) for v in trt_version_tuple)
    if not version:
        raise ValueError("trt_version must be a non-empty integer tuple")
    if precision not in PRECISIONS:
        raise ValueError("precision must be one of {}; got {!r}".format(PRECISIONS, precision))
    if not str(gpu).strip():
        raise ValueError("gpu_name must not be empty")
    return EngineCacheKey(onnx_sha256, version, str(gpu).strip(), precision, int(workspace_mib))


def cache_key_digest(key):
    """Hex sha256 of the key's canonical JSON (every field counts)."""
    canonical = json.dumps([key.onnx_sha256, list(key.trt_version), key.gpu_name, key.precision, key.workspace_mib],
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _slug(text):
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "gpu"


def engine_file_name(key, stem="model"):
    """E.g. ``pruned.trt8.2.1.8.nvidia-tegra-x1.fp16.ws512.3f1c0a9b2d4e5f60.engine``."""
    return "{}.trt{}.{}.{}.ws{}.{}.engine".format(
        _slug(stem), version_string(key.trt_version), _slug(key.gpu_name), key.precision, key.workspace_mib,
        cache_key_digest(key)[:16])


class EngineCache(object):
    """A folder of engines named by `engine_file_name`, each with a ``.json`` sidecar holding its key."""

    def __init__(self, directory):
        self.directory = os.fspath(directory)

    def path_for(self, key, stem="model"):
        return os.path.join(self.directory, engine_file_name(key, stem))

    def lookup(self, key, stem="model"):
        """Path of the cached engine for ``key``, or None."""
        path = self.path_for(key, stem)
        return path if os.path.isfile(path) and os.path.getsize(path) > 0 else None

    def store(self, key, engine_bytes, stem="model", info=None):
        """Write the engine and its sidecar atomically; returns the engine path."""
        path = self.path_for(key, stem)
        atomic_write_bytes(path, engine_bytes)
        sidecar = collections.OrderedDict([
            ("onnx_sha256", key.onnx_sha256),
            ("tensorrt", version_string(key.trt_version)),
            ("gpu_name", key.gpu_name),
            ("precision", key.precision),
            ("workspace_mib", key.workspace_mib),
            ("key_digest", cache_key_digest(key)),
            ("engine_bytes", len(engine_bytes)),
        ])
        if info:
            sidecar["build"] = info
        atomic_write_json(path + ".json", sidecar)
        return path

    def get_or_build(self, key, build, stem="model", rebuild=False):
        """(path, built): the cached engine for ``key``, or ``build()`` -> (engine bytes, info dict) stored first."""
        path = None if rebuild else self.lookup(key, stem)
        if path is not None:
            return path, False
        engine_bytes, info = build()
        return self.store(key, engine_bytes, stem, info), True


def gpu_name(device=0):
    """Name of CUDA device ``device`` through pycuda (e.g. ``NVIDIA Tegra X1``)."""
    cuda = require("pycuda.driver", "trt.cache.gpu_name")
    cuda.init()
    return str(cuda.Device(int(device)).name())


def engine_for_onnx(onnx_path, cache_dir, fp16=True, workspace_mib=512, timing_cache_path=None, log=None,
                    rebuild=False, device=0):
    """Path of an engine for ``onnx_path`` on this device, built (and cached) only when not already cached.

    Returns (engine path, built: bool, key).
    """
    from trt.builder import build_engine

    trt = import_tensorrt("engine_for_onnx")
    onnx_path = os.fspath(onnx_path)
    key = make_cache_key(sha256_file(onnx_path), trt_version(trt), gpu_name(device), "fp16" if fp16 else "fp32",
                         workspace_mib)
    stem = os.path.splitext(os.path.basename(onnx_path))[0]

    def build():
        result = build_engine(onnx_path, fp16=fp16, workspace_mib=workspace_mib,
                              timing_cache_path=timing_cache_path, log=log)
        return result.engine, result.info

    path, built = EngineCache(cache_dir).get_or_build(key, build, stem, rebuild)
    return path, built, key
