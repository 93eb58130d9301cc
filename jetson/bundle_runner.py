"""A runner for one variant of a deploy bundle on the chosen backend, and a detector around it (frame -> boxes).

    backend, why = resolve_backend("auto")            # "trt" when tensorrt + pycuda import, else "ort"
    runner, info = runner_for_variant(bundle_dir, manifest, "pruned", backend)
    with BundleDetector(bundle_dir, manifest, "pruned", backend) as detector:
        detections, stage_ms = detector.detect(frame_bgr)

TensorRT engines are built on first use and cached (`trt.cache.engine_for_onnx`, keyed by ONNX sha256, TensorRT
version, GPU, precision and workspace) in ``BUNDLE/engines/`` unless another folder is given, with a timing cache
beside them, so the second run starts in seconds.

Device module: Python 3.6 syntax, numpy at module level; onnxruntime, tensorrt and pycuda are imported lazily (by
the runners); never imports torch or onnx.
"""

import collections
import os
import time

from runtime.bundle import variant_path
from runtime.postprocess import PostprocessConfig, detections_from_outputs
from runtime.preprocess import PreprocessConfig, preprocess

__all__ = ["BACKENDS", "VariantError", "resolve_backend", "default_engine_dir", "runner_for_variant",
           "BundleDetector", "pick_variants"]

BACKENDS = ("auto", "trt", "ort")
BACKEND_NAMES = {"trt": "TensorRT", "ort": "ONNX Runtime"}


class VariantError(ValueError):
    """A variant name that the bundle does not have."""


def resolve_backend(requested):
    """(backend, reason): ``auto`` is ``trt`` when tensorrt and pycuda both import, else ``ort`` (said so)."""
    if requested not in BACKENDS:
        raise ValueError("backend must be one of {}; got {!r}".format(BACKENDS, requested))
    if requested != "auto":
        return requested, "requested with --backend {}".format(requested)
    import importlib

    missing = []
    for name in ("tensorrt", "pycuda.driver"):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing.append("{} ({})".format(name, exc))
    if not missing:
        return "trt", "auto: tensorrt and pycuda are importable"
    return "ort", "auto: no TensorRT here ({} not importable), measuring with ONNX Runtime on the CPU".format(
        ", ".join(missing))


def default_engine_dir(bundle_dir):
    return os.path.join(str(bundle_dir), "engines")


def pick_variants(manifest, requested=None):
    """Variant names to use, baseline first; ``requested`` (list or comma-separated text) must all exist."""
    available = list(manifest["variants"])
    if requested:
        names = requested.split(",") if isinstance(requested, str) else list(requested)
        names = [n.strip() for n in names if n.strip()]
        if not names:
            raise VariantError("no variant named (the bundle has {})".format(", ".join(available)))
        unknown = [n for n in names if n not in available]
        if unknown:
            raise VariantError("variant(s) {} not in the bundle (it has {})".format(", ".join(unknown),
                                                                                 ", ".join(available)))
        return names
    return sorted(available, key=lambda n: (n != "baseline", available.index(n)))


def runner_for_variant(bundle_dir, manifest, variant, backend, threads=None, engine_dir=None, workspace_mib=512,
                       rebuild=False, log=None):
    """(inactive runner, info dict) for ``variant``; for ``trt`` the engine is built now if not cached."""
    log = log or (lambda text: print(text, flush=True))
    onnx_path = variant_path(bundle_dir, manifest, variant)
    info = collections.OrderedDict([("variant", variant), ("backend", backend), ("onnx", onnx_path)])
    if backend == "ort":
        from runtime.runners import OnnxRuntimeRunner

        info["threads"] = threads
        return OnnxRuntimeRunner(onnx_path, threads=threads), info
    if backend != "trt":
        raise ValueError("backend must be 'trt' or 'ort' here; got {!r}".format(backend))
    from runtime.runners import TensorRTRunner
    from trt.cache import engine_for_onnx

    engine_dir = engine_dir or default_engine_dir(bundle_dir)
    started = time.time()
    log("{}: engine for {} (cache {}; a first build takes minutes on a Nano)".format(variant, onnx_path, engine_dir))
    engine_path, built, key = engine_for_onnx(
        onnx_path, engine_dir, fp16=True, workspace_mib=workspace_mib,
        timing_cache_path=os.path.join(engine_dir, "timing.cache"), log=lambda text: log("  " + text),
        rebuild=rebuild)
    log("{}: {} {} in {:.1f} s".format(variant, "built" if built else "reused cached engine", engine_path,
                                       time.time() - started))
    info.update([("engine", engine_path), ("engine_built", built), ("engine_seconds", round(time.time() - started, 3)),
                 ("tensorrt", ".".join(str(v) for v in key.trt_version)), ("gpu", key.gpu_name),
                 ("precision", key.precision), ("workspace_mib", key.workspace_mib)])
    return TensorRTRunner(engine_path), info


class BundleDetector(object):
    """Pre-processing, inference and post-processing of one bundle variant; a context manager.

    ``detect(frame)`` returns (`runtime.postprocess.Detections` in frame pixels, stage times in ms as an ordered dict
    ``preprocess``, ``infer``, ``postprocess``). ``score_threshold`` overrides the manifest's (e.g. 0.01 for AP).
    """

    def __init__(self, bundle_dir, manifest, variant, backend="auto", threads=None, engine_dir=None,
                 workspace_mib=512, score_threshold=None, log=None):
        self.bundle_dir = str(bundle_dir)
        self.manifest = manifest
        self.variant = variant
        self.backend, self.backend_reason = resolve_backend(backend)
        self.threads = threads
        self.engine_dir = engine_dir
        self.workspace_mib = workspace_mib
        self.log = log
        self.preprocess_config = PreprocessConfig.from_manifest(manifest)
        self.postprocess_config = PostprocessConfig.from_manifest(manifest, score_threshold=score_threshold)
        self.classes = list(manifest["classes"])
        self.runner = None
        self.info = None

    def open(self):
        runner, info = runner_for_variant(self.bundle_dir, self.manifest, self.variant, self.backend,
                                          threads=self.threads, engine_dir=self.engine_dir,
                                          workspace_mib=self.workspace_mib, log=self.log)
        runner.activate()
        self.runner = runner
        self.info = info
        return self

    def close(self):
        if self.runner is not None:
            runner = self.runner
            self.runner = None
            runner.deactivate()

    def __enter__(self):
        return self.open()

    def __exit__(self, exc_type, exc_value, traceback):
        self.close()
        return False

    def describe(self):
        """E.g. ``pruned on TensorRT FP16`` or ``baseline on ONNX Runtime (CPU)``."""
        if self.backend == "trt":
            precision = (self.info or {}).get("precision", "fp16").upper()
            return "{} on TensorRT {}".format(self.variant, precision)
        return "{} on ONNX Runtime (CPU)".format(self.variant)

    def detect(self, frame):
        t0 = time.perf_counter()
        tensor, meta = preprocess(frame, self.preprocess_config)
        t1 = time.perf_counter()
        outputs = self.runner.infer({self.preprocess_config.input_name: tensor})
        t2 = time.perf_counter()
        detections = detections_from_outputs(outputs, self.postprocess_config, meta)
        t3 = time.perf_counter()
        return detections, collections.OrderedDict([
            ("preprocess", (t1 - t0) * 1000.0), ("infer", (t2 - t1) * 1000.0), ("postprocess", (t3 - t2) * 1000.0)])
