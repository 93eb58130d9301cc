"""One compatibility layer over the TensorRT 8.2 (Jetson Nano) / 8.4+ / 10.x Python APIs.

Device module: Python 3.6 syntax; imports tensorrt lazily (inside functions) and never imports torch or onnx.

Every choice between API generations is made by a feature test (``hasattr``) on the object at hand, and versions
are parsed to integer tuples: comparing version strings puts "10.0" before "8.2" and takes the wrong branch.

| choice | 8.2 | 8.4 - 8.6 | 10.x | 11.x |
|---|---|---|---|---|
| workspace | ``config.max_workspace_size`` | ``set_memory_pool_limit`` | ``set_memory_pool_limit`` | refused |
| network flags | ``EXPLICIT_BATCH`` required | required | deprecated: 0 | refused |
| I/O | bindings + ``execute_async_v2`` | tensor API from 8.5 | tensor API + ``execute_async_v3`` | refused |

TensorRT 11 removed ``BuilderFlag.FP16``: FP16 must be stored in the ONNX model there, which this project's export
does not do, so 11 is refused with a clear message rather than silently building FP32 engines.
"""

import re

from runtime.lazy import require

__all__ = [
    "MIN_SUPPORTED", "FIRST_UNSUPPORTED", "UnsupportedTensorRTError", "parse_version", "version_string",
    "check_supported", "trt_version", "import_tensorrt", "workspace_api", "set_workspace", "needs_explicit_batch_flag",
    "network_creation_flags", "has_build_serialized_network", "timing_cache_supported", "io_api", "execution_call",
    "fp16_decision", "engine_device_memory", "capabilities", "get_logger",
]

# build_serialized_network appeared in 8.0; the Nano's JetPack 4.6.1+ ships 8.2.1.
MIN_SUPPORTED = (8, 0)
FIRST_UNSUPPORTED = (11, 0)

_LEADING_INT = re.compile(r"^(\d+)")


class UnsupportedTensorRTError(RuntimeError):
    """The installed TensorRT is outside the range this code supports."""


def parse_version(text):
    """``"8.2.1.8"`` -> ``(8, 2, 1, 8)``; ``"10.0.0b6"`` -> ``(10, 0, 0)``; ``"8.6.1.post1"`` -> ``(8, 6, 1)``.

    Components are read up to the first one that does not start with a digit. Raises ValueError when there is no
    leading number at all.
    """
    parts = []
    for piece in str(text).strip().split("."):
        match = _LEADING_INT.match(piece)
        if match is None:
            break
        parts.append(int(match.group(1)))
        if match.group(1) != piece:  # "0b6", "1rc2": a pre-release tag ends the numeric part
            break
    if not parts:
        raise ValueError("cannot parse a version number from {!r}".format(text))
    return tuple(parts)


def version_string(version):
    return ".".join(str(part) for part in version)


def check_supported(version):
    """Raise `UnsupportedTensorRTError` unless ``MIN_SUPPORTED <= version < FIRST_UNSUPPORTED`` (integer tuples)."""
    version = tuple(version)
    if version >= FIRST_UNSUPPORTED:
        raise UnsupportedTensorRTError(
            "TensorRT {} is not supported: TensorRT 11 removed BuilderFlag.FP16, so FP16 must be stored in the ONNX "
            "model, which this project's export does not produce; use TensorRT 8.2 to 10.x".format(
                version_string(version)))
    if version < MIN_SUPPORTED:
        raise UnsupportedTensorRTError(
            "TensorRT {} is too old: this code needs build_serialized_network (TensorRT >= 8.0); on a Jetson Nano "
            "install JetPack 4.6.1 or newer (TensorRT 8.2.1)".format(version_string(version)))
    return version


def trt_version(trt=None):
    """The installed (or given) tensorrt module's version as an integer tuple."""
    if trt is None:
        trt = require("tensorrt", "trt_version")
    return parse_version(trt.__version__)


def import_tensorrt(purpose):
    """Import tensorrt lazily and refuse versions outside the supported range."""
    trt = require("tensorrt", purpose)
    check_supported(trt_version(trt))
    return trt


# --- builder ---------------------------------------------------------------------------------------------------


def workspace_api(config):
    """``"memory_pool_limit"`` (8.4+) or ``"max_workspace_size"`` (8.2), by feature test on a builder config."""
    if hasattr(config, "set_memory_pool_limit"):
        return "memory_pool_limit"
    if hasattr(config, "max_workspace_size"):
        return "max_workspace_size"
    raise UnsupportedTensorRTError("this TensorRT builder config has neither set_memory_pool_limit nor "
                                   "max_workspace_size; cannot limit the build workspace")


def set_workspace(trt, config, nbytes):
    """Limit the builder workspace to ``nbytes``; returns which API was used."""
    api = workspace_api(config)
    if api == "memory_pool_limit":
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(nbytes))
    else:
        # NOTE: TensorRT 8.2 (the Nano) has only this setter; 8.4 deprecated it and 10 removed it.
        config.max_workspace_size = int(nbytes)
    return api


def needs_explicit_batch_flag(version):
    """TensorRT < 10 builds implicit-batch networks unless EXPLICIT_BATCH is set; 10 deprecated the flag."""
    return tuple(version) < (10, 0)


def network_creation_flags(trt, version):
    if needs_explicit_batch_flag(version):
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return 0


def has_build_serialized_network(builder):
    return hasattr(builder, "build_serialized_network")


def timing_cache_supported(config):
    return all(hasattr(config, name) for name in ("create_timing_cache", "set_timing_cache", "get_timing_cache"))


def fp16_decision(requested, platform_has_fast_fp16):
    """(use FP16?, reason). ``platform_has_fast_fp16`` None means the builder no longer reports it (10.x)."""
    if not requested:
        return False, "FP32: FP16 not requested"
    if platform_has_fast_fp16 is None:
        return True, "FP16: requested (this TensorRT does not report platform_has_fast_fp16)"
    if platform_has_fast_fp16:
        return True, "FP16: requested and the GPU has fast FP16"
    return False, "FP32: FP16 requested but this GPU has no fast FP16 (builder.platform_has_fast_fp16 is False)"


# --- runtime ---------------------------------------------------------------------------------------------------


def io_api(engine):
    """``"tensor"`` (name-based API, 8.5+ and 10) or ``"binding"`` (8.2), by feature test on an engine.

    When both exist (8.5, 8.6) the tensor API is used: it is the one that survives into 10.
    """
    if hasattr(engine, "num_io_tensors"):
        return "tensor"
    if hasattr(engine, "num_bindings"):
        return "binding"
    raise UnsupportedTensorRTError("this TensorRT engine has neither num_io_tensors nor num_bindings; cannot find "
                                   "its inputs and outputs")


def execution_call(api, profiling, version):
    """Name of the IExecutionContext method that runs inference.

    NOTE: TensorRT up to 8.4 documents that enqueue/execute_async does not report to an IProfiler, so profiled runs
    on the binding API use the synchronous ``execute_v2``; from 8.5 the profiler also works with the async calls.
    """
    if api == "tensor":
        return "execute_async_v3"
    if api != "binding":
        raise ValueError("api must be 'tensor' or 'binding'; got {!r}".format(api))
    if profiling and tuple(version) < (8, 5):
        return "execute_v2"
    return "execute_async_v2"


def engine_device_memory(engine):
    """Bytes of device scratch memory an execution context of ``engine`` needs, or None if not reported."""
    for name in ("device_memory_size_v2", "device_memory_size"):  # _v2 appeared in 10.x, the other is deprecated
        value = getattr(engine, name, None)
        if value is not None:
            return int(value)
    return None


def capabilities(trt):
    """What this tensorrt module offers, by feature tests on its classes (for reports and self-tests)."""
    version = trt_version(trt)
    config_cls = getattr(trt, "IBuilderConfig", None)
    engine_cls = getattr(trt, "ICudaEngine", None)
    builder_cls = getattr(trt, "Builder", None)
    supported = True
    reason = None
    try:
        check_supported(version)
    except UnsupportedTensorRTError as exc:
        supported = False
        reason = str(exc)
    result = {
        "version": version_string(version),
        "supported": supported,
        "unsupported_reason": reason,
        "explicit_batch_flag": needs_explicit_batch_flag(version),
        "workspace_api": None,
        "io_api": None,
        "build_serialized_network": builder_cls is not None and has_build_serialized_network(builder_cls),
        "timing_cache": config_cls is not None and timing_cache_supported(config_cls),
    }
    if config_cls is not None:
        try:
            result["workspace_api"] = workspace_api(config_cls)
        except UnsupportedTensorRTError:
            pass
    if engine_cls is not None:
        try:
            result["io_api"] = io_api(engine_cls)
        except UnsupportedTensorRTError:
            pass
    return result


_LOGGERS = {}


def get_logger(trt, severity="WARNING"):
    """One trt.Logger per severity and module, reused (TensorRT expects a long-lived logger)."""
    key = (id(trt), severity)
    if key not in _LOGGERS:
        _LOGGERS[key] = trt.Logger(getattr(trt.Logger, severity))
    return _LOGGERS[key]
