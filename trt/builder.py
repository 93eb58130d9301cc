"""Build a TensorRT engine from an ONNX file: FP16 where the GPU has it, a workspace limit fit for the Nano.

Device module: Python 3.6 syntax; tensorrt is imported lazily; never imports torch or onnx.

Engines are built on the device that runs them (an engine is tied to the TensorRT version and the GPU). On a 4 GB
Nano the build shares memory with everything else: the default workspace is 512 MiB, and a failed build says what
to try. The timing cache (kernel timings) is loaded and saved, when a path is given, so rebuilds after pruning
changes are faster.

API generations are chosen by feature test in `trt.compat`: ``build_serialized_network`` everywhere (8.0 - 10.x),
the workspace setter, the explicit-batch flag (< 10 only), TensorRT 11 refused.
"""

import collections
import os
import sys
import time

from runtime.fileio import atomic_write_bytes
from trt.compat import (
    fp16_decision, get_logger, has_build_serialized_network, import_tensorrt, network_creation_flags, set_workspace,
    timing_cache_supported, trt_version, version_string,
)
from runtime.onnx_wire import onnx_nodes

__all__ = [
    "DEFAULT_WORKSPACE_MIB", "OnnxParseError", "EngineBuildError", "BuildResult", "describe_parser_error",
    "parser_error_messages", "build_engine",
]

DEFAULT_WORKSPACE_MIB = 512  # of the Nano's 4 GB shared by CPU and GPU

# engine: the serialized engine (bytes); info: what was built and how (JSON-ready dict).
BuildResult = collections.namedtuple("BuildResult", ["engine", "info"])


class OnnxParseError(RuntimeError):
    """TensorRT's ONNX parser refused the model; the message lists every parser error with its node."""


class EngineBuildError(RuntimeError):
    """TensorRT parsed the model but could not build an engine."""


def _stderr_log(message):
    sys.stderr.write("[trt.builder] {}\n".format(message))
    sys.stderr.flush()


def _call_or_none(obj, name):
    method = getattr(obj, name, None)
    if method is None:
        return None
    return method()


def describe_parser_error(error, nodes=None):
    """One line for one ``IParserError``: node index, name and op type where known, description, error code.

    TensorRT 10 reports the node name and operator itself (``node_name()``, ``node_operator()``); 8.2 gives only
    the node index (``node()``), which ``nodes`` (from `runtime.onnx_wire.onnx_nodes`) maps to the name and op type.
    """
    index = _call_or_none(error, "node")
    index = -1 if index is None else int(index)
    name = _call_or_none(error, "node_name")
    operator = _call_or_none(error, "node_operator")
    if not name and nodes is not None and 0 <= index < len(nodes):
        name = nodes[index].name
        operator = operator or nodes[index].op_type
    code = _call_or_none(error, "code")
    description = _call_or_none(error, "desc")
    if index < 0 and not name:
        where = "model"
    else:
        where = "node {} '{}' ({})".format(index, name or "?", operator or "?")
    return "{}: {} [{}]".format(where, description, code)


def parser_error_messages(parser, nodes=None):
    return [describe_parser_error(parser.get_error(i), nodes) for i in range(parser.num_errors)]


def _read_timing_cache(path, log):
    if path is None or not os.path.isfile(os.fspath(path)):
        return b""
    with open(os.fspath(path), "rb") as handle:
        data = handle.read()
    log("timing cache: loaded {} bytes from {}".format(len(data), os.fspath(path)))
    return data


def build_engine(onnx_path, fp16=True, workspace_mib=DEFAULT_WORKSPACE_MIB, timing_cache_path=None, log=None,
                 engine_path=None):
    """Parse ``onnx_path`` and build a serialized TensorRT engine.

    Args:
        onnx_path: ONNX file (opset <= 13, static shapes, weights embedded).
        fp16: request FP16 kernels; used only if ``builder.platform_has_fast_fp16`` (FP32 otherwise, and said so).
        workspace_mib: builder workspace limit in MiB.
        timing_cache_path: file to load the timing cache from (if it exists) and to save it to after the build.
        log: callable taking one string (default: stderr).
        engine_path: if given, the engine is also written there atomically.

    Returns:
        `BuildResult` (engine bytes, info dict).

    Raises:
        OnnxParseError: with one line per parser error (node index, name, op type, description).
        EngineBuildError: when ``build_serialized_network`` returns None.
    """
    log = log or _stderr_log
    onnx_path = os.fspath(onnx_path)
    trt = import_tensorrt("build_engine")
    version = trt_version(trt)
    with open(onnx_path, "rb") as handle:
        data = handle.read()

    started = time.time()
    logger = get_logger(trt)
    builder = trt.Builder(logger)
    if not has_build_serialized_network(builder):
        raise EngineBuildError("TensorRT {} has no Builder.build_serialized_network".format(version_string(version)))
    network = builder.create_network(network_creation_flags(trt, version))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data, onnx_path):
        try:
            nodes = onnx_nodes(data)
        except ValueError:
            nodes = None
        messages = parser_error_messages(parser, nodes)
        raise OnnxParseError("TensorRT {} could not parse {} ({} error{}):\n  {}".format(
            version_string(version), onnx_path, len(messages), "" if len(messages) == 1 else "s",
            "\n  ".join(messages) or "no error was reported"))
    del data

    config = builder.create_builder_config()
    workspace_bytes = int(workspace_mib) << 20
    workspace_api = set_workspace(trt, config, workspace_bytes)
    use_fp16, fp16_reason = fp16_decision(fp16, getattr(builder, "platform_has_fast_fp16", None))
    if use_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    log(fp16_reason)

    timing_cache = None
    if timing_cache_path is not None:
        if timing_cache_supported(config):
            timing_cache = config.create_timing_cache(_read_timing_cache(timing_cache_path, log))
            # ignore_mismatch=False: a cache written on another GPU or TensorRT version is refused (returns False);
            # the build then starts from an empty cache and the file is overwritten with this device's timings.
            if config.set_timing_cache(timing_cache, False) is False:
                log("timing cache: {} was written on another device or TensorRT version; ignoring it".format(
                    os.fspath(timing_cache_path)))
                timing_cache = config.create_timing_cache(b"")
                config.set_timing_cache(timing_cache, False)
        else:
            log("timing cache: not supported by TensorRT {}; building without".format(version_string(version)))

    log("building {} with TensorRT {}, workspace {} MiB ({})".format(
        onnx_path, version_string(version), workspace_mib, workspace_api))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            "TensorRT {} could not build an engine from {} (see the TensorRT log above); on a Jetson Nano this is "
            "usually memory: close other programs, add swap, or lower workspace_mib (now {})".format(
                version_string(version), onnx_path, workspace_mib))
    engine = bytes(memoryview(serialized))
    del serialized

    if timing_cache is not None:
        cache_data = config.get_timing_cache().serialize()
        atomic_write_bytes(timing_cache_path, memoryview(cache_data))
        log("timing cache: saved {} bytes to {}".format(len(memoryview(cache_data)), os.fspath(timing_cache_path)))

    info = collections.OrderedDict([
        ("onnx", onnx_path),
        ("tensorrt", version_string(version)),
        ("fp16", use_fp16),
        ("precision_reason", fp16_reason),
        ("workspace_mib", int(workspace_mib)),
        ("workspace_api", workspace_api),
        ("explicit_batch_flag", network_creation_flags(trt, version) != 0),
        ("timing_cache", None if timing_cache_path is None else os.fspath(timing_cache_path)),
        ("engine_bytes", len(engine)),
        ("build_seconds", round(time.time() - started, 3)),
    ])
    if engine_path is not None:
        atomic_write_bytes(engine_path, engine)
        info["engine_path"] = os.fspath(engine_path)
    log("built {} bytes in {} s".format(len(engine), info["build_seconds"]))
    return BuildResult(engine, info)
