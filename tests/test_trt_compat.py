"""TensorRT version ladder and feature selection, engine cache keys, and the builder/runner control flow.

TEST DOUBLES. ``FakeTensorRT82`` / ``FakeTensorRT86`` / ``FakeTensorRT10`` / ``FakeTensorRT11`` and ``FakePycuda``
below are hand-written stand-ins that have only the *attribute names* of the real modules, shaped after the API
table in docs/jetson-nano.md. They exercise ONLY this project's version-ladder / feature-selection logic and the
control flow of trt.builder and runtime.runners.TensorRTRunner (which branch is taken, which setter is called, that
buffers are allocated, copied and freed in order). They prove NOTHING about real TensorRT or pycuda: signatures,
return types, memory semantics and numerical behaviour of the real libraries are not checked here. That needs a
run on a machine with TensorRT (a Jetson Nano, TensorRT 8.2; or a desktop GPU, TensorRT 10).
Their attribute *names* are checked against real releases' Python APIs in tests/test_trt_real_api.py.
"""

import json
import os
import sys
import types

import numpy as np
import pytest

from runtime.runners import TensorRTRunner, engine_io_specs
from trt import compat
from trt.builder import OnnxParseError, build_engine, describe_parser_error
from trt.cache import EngineCache, cache_key_digest, engine_file_name, make_cache_key
from runtime.onnx_wire import OnnxNode

# --- the doubles ------------------------------------------------------------------------------------------------


class _Enum(object):
    def __init__(self, **members):
        self.__dict__.update(members)


class _FakeLogger(object):
    WARNING = "WARNING"

    def __init__(self, severity):
        self.severity = severity


class _FakeParserError(object):
    def __init__(self, node, desc, name=None, operator=None):
        self._node, self._desc = node, desc
        if name is not None:  # TensorRT 10 reports the node name and operator itself
            self.node_name = lambda: name
            self.node_operator = lambda: operator

    def node(self):
        return self._node

    def desc(self):
        return self._desc

    def code(self):
        return "UNSUPPORTED_NODE"


class _FakeTimingCache(object):
    def __init__(self, data):
        self.data = bytes(data)

    def serialize(self):
        return self.data + b"+timings"


class _BaseConfig(object):
    def __init__(self):
        self.flags = []
        self.workspace_calls = []
        self.timing_cache = None

    def set_flag(self, flag):
        self.flags.append(flag)

    def create_timing_cache(self, data):
        return _FakeTimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        self.timing_cache = cache
        return True

    def get_timing_cache(self):
        return self.timing_cache


class _Config82(_BaseConfig):
    """8.2: workspace only through the max_workspace_size attribute."""

    @property
    def max_workspace_size(self):
        return self.workspace_calls[-1][1] if self.workspace_calls else 0

    @max_workspace_size.setter
    def max_workspace_size(self, value):
        self.workspace_calls.append(("max_workspace_size", value))


class _Config10(_BaseConfig):
    """8.4+ / 10: workspace through set_memory_pool_limit."""

    def set_memory_pool_limit(self, pool, value):
        self.workspace_calls.append(("set_memory_pool_limit", pool, value))


class _FakeNetwork(object):
    def __init__(self, flags):
        self.flags = flags


class _FakeOnnxParser(object):
    errors = []  # set by a test to make parse() fail

    def __init__(self, network, logger):
        self.network = network

    def parse(self, data, path=None):
        self.parsed = (len(data), path)
        return not self.errors

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, index):
        return self.errors[index]


class _FakeBuilder(object):
    """TensorRT 11's Builder (no platform_has_fast_fp16: FP16 went with BuilderFlag.FP16)."""
    config_cls = _Config10

    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags):
        self.network_flags = flags
        return _FakeNetwork(flags)

    def create_builder_config(self):
        return self.config_cls()

    def build_serialized_network(self, network, config):
        description = {"flags": config.flags, "network_flags": network.flags,
                       "workspace": [list(map(str, c)) for c in config.workspace_calls]}
        return json.dumps(description).encode("utf-8")


class _FakeBuilderFP16(_FakeBuilder):
    """8.x / 10.x: the GPU's fast-FP16 flag."""
    fast_fp16 = True

    @property
    def platform_has_fast_fp16(self):
        return self.fast_fp16


# Engine doubles: input "images" (1, 3, 4, 4) float32; outputs "sum" (1, 1) and "double" (1, 3, 4, 4).
_IO = [("images", True, (1, 3, 4, 4)), ("sum", False, (1, 1)), ("double", False, (1, 3, 4, 4))]


class _EngineBindingAPI(object):
    num_bindings = len(_IO)
    device_memory_size = 4096

    def get_binding_name(self, i):
        return _IO[i][0]

    def binding_is_input(self, i):
        return _IO[i][1]

    def get_binding_shape(self, i):
        return _IO[i][2]

    def get_binding_dtype(self, i):
        return "FLOAT"

    def create_execution_context(self):
        return _ContextBindingAPI()


class _EngineTensorIO(object):
    num_io_tensors = len(_IO)

    def get_tensor_name(self, i):
        return _IO[i][0]

    def get_tensor_mode(self, name):
        return "INPUT" if dict((n, i) for n, i, _ in _IO)[name] else "OUTPUT"

    def get_tensor_shape(self, name):
        return dict((n, s) for n, _, s in _IO)[name]

    def get_tensor_dtype(self, name):
        return "FLOAT"

    def create_execution_context(self):
        return _ContextTensorAPI()


class _EngineTensorAPI(_EngineTensorIO):
    device_memory_size = 4096  # 8.5 - 10.x (10.x later adds device_memory_size_v2)


class _EngineTensorAPI11(_EngineTensorIO):
    device_memory_size_v2 = 4096  # TensorRT 11 keeps only this one


class _EngineBothAPIs(_EngineBindingAPI, _EngineTensorAPI):
    def create_execution_context(self):
        return _ContextTensorAPI()


def _compute(pointers):
    images = FakePycuda.read(pointers["images"], (1, 3, 4, 4))
    FakePycuda.write(pointers["sum"], images.sum().reshape(1, 1))
    FakePycuda.write(pointers["double"], images * 2)


class _ContextBindingAPI(object):
    profiler = None

    def __init__(self):
        self.calls = []

    def execute_async_v2(self, bindings, stream_handle):
        self.calls.append("execute_async_v2")
        _compute(dict(zip([n for n, _, _ in _IO], bindings)))
        return True

    def execute_v2(self, bindings):
        self.calls.append("execute_v2")
        _compute(dict(zip([n for n, _, _ in _IO], bindings)))
        return True


class _ContextTensorAPI(object):
    profiler = None

    def __init__(self):
        self.calls = []
        self.addresses = {}

    def set_tensor_address(self, name, pointer):
        self.addresses[name] = pointer

    def execute_async_v3(self, stream_handle):
        self.calls.append("execute_async_v3")
        _compute(self.addresses)
        return True


class _FakeRuntime(object):
    engine_cls = _EngineBindingAPI

    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, data):
        return self.engine_cls() if bytes(data).startswith(b"ENGINE") else None


def _make_fake_tensorrt(version, config_cls, engine_cls, before_11=True):
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    module.Logger = _FakeLogger
    module.NetworkDefinitionCreationFlag = _Enum(EXPLICIT_BATCH=0) if before_11 else _Enum()
    module.MemoryPoolType = _Enum(WORKSPACE="WORKSPACE")
    module.BuilderFlag = _Enum(FP16="FP16") if before_11 else _Enum()
    module.TensorIOMode = _Enum(INPUT="INPUT")
    module.nptype = lambda dtype: {"FLOAT": np.float32}[dtype]
    module.IProfiler = type("IProfiler", (object,), {"__init__": lambda self: None})
    module.IBuilderConfig = config_cls
    module.ICudaEngine = engine_cls
    module.Builder = type("Builder", (_FakeBuilderFP16 if before_11 else _FakeBuilder,), {"config_cls": config_cls})
    module.OnnxParser = type("OnnxParser", (_FakeOnnxParser,), {"errors": []})
    module.Runtime = type("Runtime", (_FakeRuntime,), {"engine_cls": engine_cls})
    return module


def FakeTensorRT82():
    """Shaped like TensorRT 8.2 (Jetson Nano): max_workspace_size, binding API, EXPLICIT_BATCH required."""
    return _make_fake_tensorrt("8.2.1.8", _Config82, _EngineBindingAPI)


def FakeTensorRT86():
    """Shaped like TensorRT 8.6: both workspace setters' successor, both I/O APIs."""
    return _make_fake_tensorrt("8.6.1.6", _Config10, _EngineBothAPIs)


def FakeTensorRT10():
    """Shaped like TensorRT 10: set_memory_pool_limit, tensor-name API only."""
    return _make_fake_tensorrt("10.3.0.26", _Config10, _EngineTensorAPI)


def FakeTensorRT11():
    """Shaped like TensorRT 11 (tests/fixtures/tensorrt_api/11.0.0.114.json): no BuilderFlag.FP16, no
    Builder.platform_has_fast_fp16, no EXPLICIT_BATCH, only device_memory_size_v2."""
    return _make_fake_tensorrt("11.0.0.1", _Config10, _EngineTensorAPI11, before_11=False)


class FakePycuda(object):
    """pycuda.driver double: device memory is a dict of numpy byte buffers keyed by fake pointers."""

    memory = {}
    next_pointer = [0x1000]
    total = 4 << 30
    log = []

    @classmethod
    def reset(cls):
        cls.memory.clear()
        del cls.log[:]

    @classmethod
    def read(cls, pointer, shape):
        return cls.memory[pointer].view(np.float32).reshape(shape).copy()

    @classmethod
    def write(cls, pointer, array):
        cls.memory[pointer][:] = np.ascontiguousarray(array, dtype=np.float32).view(np.uint8).reshape(-1)

    @classmethod
    def module(cls):
        driver = types.ModuleType("pycuda.driver")

        class DeviceAllocation(object):
            def __init__(self, nbytes):
                self.pointer = cls.next_pointer[0]
                cls.next_pointer[0] += 0x1000 + nbytes
                cls.memory[self.pointer] = np.zeros(nbytes, np.uint8)

            def __int__(self):
                return self.pointer

            def free(self):
                cls.log.append("free")
                del cls.memory[self.pointer]

        class Context(object):
            def push(self):
                cls.log.append("push")

            def pop(self):
                cls.log.append("pop")

        class Device(object):
            def __init__(self, index):
                self.index = index

            def retain_primary_context(self):
                return Context()

            def name(self):
                return "Fake GPU"

        class Stream(object):
            handle = 7

            def synchronize(self):
                pass

        class Event(object):
            def record(self, stream):
                pass

            def synchronize(self):
                pass

            def time_till(self, other):
                return 0.25

        def memcpy_htod_async(device, host, stream):
            cls.log.append("htod")
            cls.memory[int(device)][:] = np.ascontiguousarray(host).view(np.uint8).reshape(-1)

        def memcpy_dtoh_async(host, device, stream):
            cls.log.append("dtoh")
            host.view(np.uint8).reshape(-1)[:] = cls.memory[int(device)]

        def mem_get_info():
            used = sum(buffer.nbytes for buffer in cls.memory.values())
            return cls.total - used, cls.total

        driver.init = lambda: cls.log.append("init")
        driver.Device = Device
        driver.Stream = Stream
        driver.Event = Event
        driver.mem_alloc = DeviceAllocation
        driver.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)
        driver.memcpy_htod_async = memcpy_htod_async
        driver.memcpy_dtoh_async = memcpy_dtoh_async
        driver.mem_get_info = mem_get_info
        package = types.ModuleType("pycuda")
        package.driver = driver
        return package, driver


@pytest.fixture()
def install(monkeypatch):
    """Put a fake tensorrt (and pycuda) into sys.modules for the lazy imports of the code under test."""

    def _install(fake_trt):
        monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
        package, driver = FakePycuda.module()
        monkeypatch.setitem(sys.modules, "pycuda", package)
        monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
        FakePycuda.reset()
        return fake_trt

    return _install


# --- version parsing --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("8.2.1.8", (8, 2, 1, 8)),
    ("8.2.1", (8, 2, 1)),
    ("10.0.1.6", (10, 0, 1, 6)),
    ("10.0.0b6", (10, 0, 0)),
    ("8.6.1.post1", (8, 6, 1)),
    (" 10.3 ", (10, 3)),
    ("7", (7,)),
])
def test_parse_version(text, expected):
    assert compat.parse_version(text) == expected


@pytest.mark.parametrize("text", ["", "abc", ".8.2", "v8.2"])
def test_parse_version_refuses_garbage(text):
    with pytest.raises(ValueError):
        compat.parse_version(text)


def test_versions_compare_as_integers_not_strings():
    assert "10.0.1" < "8.2.1"  # the string trap
    assert compat.parse_version("10.0.1") > compat.parse_version("8.2.1")
    assert compat.parse_version("8.10.0") > compat.parse_version("8.9.9")
    assert not compat.needs_explicit_batch_flag(compat.parse_version("10.0.1"))
    assert compat.needs_explicit_batch_flag(compat.parse_version("8.2.1.8"))


def test_supported_range():
    compat.check_supported((8, 2, 1, 8))
    compat.check_supported((10, 13, 0))
    with pytest.raises(compat.UnsupportedTensorRTError, match="FP16 must be stored in the ONNX"):
        compat.check_supported((11, 0, 0))
    with pytest.raises(compat.UnsupportedTensorRTError, match="too old"):
        compat.check_supported((7, 1, 3))


# --- feature selection on the doubles ---------------------------------------------------------------------------


def test_fake_82_selects_max_workspace_size_binding_api_and_explicit_batch():
    trt = FakeTensorRT82()
    version = compat.trt_version(trt)
    config = trt.Builder(None).create_builder_config()
    assert compat.set_workspace(trt, config, 512 << 20) == "max_workspace_size"
    assert config.workspace_calls == [("max_workspace_size", 512 << 20)]
    assert compat.network_creation_flags(trt, version) == 1
    assert compat.io_api(trt.ICudaEngine()) == "binding"
    assert compat.execution_call("binding", False, version) == "execute_async_v2"
    assert compat.execution_call("binding", True, version) == "execute_v2"  # 8.2 cannot profile async runs
    caps = compat.capabilities(trt)
    assert caps["supported"] and caps["workspace_api"] == "max_workspace_size" and caps["io_api"] == "binding"
    assert caps["explicit_batch_flag"] and caps["build_serialized_network"] and caps["timing_cache"]


def test_fake_86_prefers_tensor_api_when_both_exist():
    trt = FakeTensorRT86()
    assert compat.io_api(trt.ICudaEngine()) == "tensor"
    assert compat.network_creation_flags(trt, compat.trt_version(trt)) == 1
    assert compat.execution_call("binding", True, compat.trt_version(trt)) == "execute_async_v2"


def test_fake_10_selects_memory_pool_and_tensor_api():
    trt = FakeTensorRT10()
    version = compat.trt_version(trt)
    config = trt.Builder(None).create_builder_config()
    assert compat.set_workspace(trt, config, 256 << 20) == "memory_pool_limit"
    assert config.workspace_calls == [("set_memory_pool_limit", "WORKSPACE", 256 << 20)]
    assert compat.network_creation_flags(trt, version) == 0
    assert compat.io_api(trt.ICudaEngine()) == "tensor"
    assert compat.execution_call("tensor", True, version) == "execute_async_v3"
    caps = compat.capabilities(trt)
    assert caps["supported"] and caps["workspace_api"] == "memory_pool_limit" and caps["io_api"] == "tensor"


def test_fake_11_is_refused_everywhere(install, tmp_path):
    trt = install(FakeTensorRT11())
    caps = compat.capabilities(trt)
    assert not caps["supported"] and "TensorRT 11" in caps["unsupported_reason"]
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"x")
    with pytest.raises(compat.UnsupportedTensorRTError, match="11.0.0.1 is not supported"):
        build_engine(onnx_file, log=lambda m: None)
    with pytest.raises(compat.UnsupportedTensorRTError):
        TensorRTRunner(b"ENGINE").activate()


def test_objects_without_either_api_are_refused_clearly():
    with pytest.raises(compat.UnsupportedTensorRTError, match="neither set_memory_pool_limit nor"):
        compat.workspace_api(object())
    with pytest.raises(compat.UnsupportedTensorRTError, match="neither num_io_tensors nor num_bindings"):
        compat.io_api(object())


def test_fp16_decision():
    assert compat.fp16_decision(True, True)[0] is True
    use, reason = compat.fp16_decision(True, False)
    assert use is False and "no fast FP16" in reason
    assert compat.fp16_decision(False, True)[0] is False
    assert compat.fp16_decision(True, None)[0] is True


def test_engine_device_memory_prefers_v2():
    assert compat.engine_device_memory(types.SimpleNamespace(device_memory_size=10)) == 10
    assert compat.engine_device_memory(types.SimpleNamespace(device_memory_size=10, device_memory_size_v2=12)) == 12
    assert compat.engine_device_memory(object()) is None


# --- engine cache -----------------------------------------------------------------------------------------------

BASE_KEY = dict(onnx_sha256="ab" * 32, trt_version_tuple=(8, 2, 1, 8), gpu="NVIDIA Tegra X1", precision="fp16",
                workspace_mib=512)


def test_cache_key_changes_with_every_field():
    base = make_cache_key(**BASE_KEY)
    variants = [
        dict(BASE_KEY, onnx_sha256="cd" * 32),
        dict(BASE_KEY, trt_version_tuple=(8, 2, 1, 9)),
        dict(BASE_KEY, trt_version_tuple=(10, 3, 0)),
        dict(BASE_KEY, gpu="NVIDIA GeForce RTX 3060"),
        dict(BASE_KEY, precision="fp32"),
        dict(BASE_KEY, workspace_mib=1024),
    ]
    digests = {cache_key_digest(base)}
    names = {engine_file_name(base)}
    for variant in variants:
        key = make_cache_key(**variant)
        digests.add(cache_key_digest(key))
        names.add(engine_file_name(key))
    assert len(digests) == len(variants) + 1 and len(names) == len(variants) + 1
    # Deterministic, readable.
    assert cache_key_digest(make_cache_key(**BASE_KEY)) == cache_key_digest(base)
    assert engine_file_name(base, "pruned").startswith("pruned.trt8.2.1.8.nvidia-tegra-x1.fp16.ws512.")
    assert engine_file_name(base).endswith(".engine")


def test_cache_key_validation():
    with pytest.raises(ValueError, match="64 hex"):
        make_cache_key(**dict(BASE_KEY, onnx_sha256="xyz"))
    with pytest.raises(ValueError, match="precision"):
        make_cache_key(**dict(BASE_KEY, precision="int8"))


def test_engine_cache_stores_atomically_and_reuses(tmp_path):
    cache = EngineCache(tmp_path / "engines")
    key = make_cache_key(**BASE_KEY)
    builds = []

    def build():
        builds.append(1)
        return b"ENGINE-BYTES", {"fp16": True}

    path, built = cache.get_or_build(key, build, "pruned")
    assert built and os.path.basename(path) == engine_file_name(key, "pruned")
    assert open(path, "rb").read() == b"ENGINE-BYTES"
    sidecar = json.loads(open(path + ".json").read())
    assert sidecar["tensorrt"] == "8.2.1.8" and sidecar["key_digest"] == cache_key_digest(key)
    again, built_again = cache.get_or_build(key, build, "pruned")
    assert again == path and not built_again and len(builds) == 1
    _, rebuilt = cache.get_or_build(key, build, "pruned", rebuild=True)
    assert rebuilt and len(builds) == 2
    assert not [f for f in os.listdir(str(tmp_path / "engines")) if ".tmp-" in f]


def test_failed_build_leaves_no_engine(tmp_path):
    cache = EngineCache(tmp_path)
    key = make_cache_key(**BASE_KEY)

    def build():
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        cache.get_or_build(key, build)
    assert cache.lookup(key) is None and os.listdir(str(tmp_path)) == []


# --- builder control flow on the doubles ------------------------------------------------------------------------


@pytest.mark.parametrize("make, workspace_api, network_flags", [
    (FakeTensorRT82, "max_workspace_size", 1),
    (FakeTensorRT10, "memory_pool_limit", 0),
])
def test_build_engine_control_flow(install, tmp_path, make, workspace_api, network_flags):
    install(make())
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"not parsed by the double")
    cache_file = tmp_path / "timing.cache"
    messages = []
    result = build_engine(onnx_file, workspace_mib=64, timing_cache_path=cache_file, log=messages.append,
                          engine_path=tmp_path / "m.engine")
    built = json.loads(result.engine.decode("utf-8"))
    assert built["flags"] == ["FP16"] and built["network_flags"] == network_flags
    assert str(64 << 20) in built["workspace"][0]
    assert result.info["workspace_api"] == workspace_api and result.info["fp16"] is True
    assert (tmp_path / "m.engine").read_bytes() == result.engine
    assert cache_file.read_bytes() == b"+timings"  # created empty, serialized after the build
    build_engine(onnx_file, workspace_mib=64, timing_cache_path=cache_file, log=messages.append)
    assert cache_file.read_bytes() == b"+timings+timings"  # loaded, then saved again
    assert any("loaded" in m for m in messages)


def test_build_engine_ignores_a_timing_cache_from_another_device(install, tmp_path):
    trt = install(FakeTensorRT10())

    class RefusingConfig(_Config10):
        def set_timing_cache(self, cache, ignore_mismatch):
            assert ignore_mismatch is False
            self.timing_cache = cache
            return cache.data == b""  # TensorRT refuses (returns False) a cache of another GPU / version

    trt.Builder.config_cls = RefusingConfig
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"x")
    cache_file = tmp_path / "timing.cache"
    cache_file.write_bytes(b"other-gpu")
    messages = []
    build_engine(onnx_file, timing_cache_path=cache_file, log=messages.append)
    assert any("written on another device or TensorRT version; ignoring it" in m for m in messages)
    assert cache_file.read_bytes() == b"+timings"  # replaced by this device's cache


def test_build_engine_without_fast_fp16_builds_fp32(install, tmp_path):
    trt = install(FakeTensorRT82())
    trt.Builder.fast_fp16 = False
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"x")
    result = build_engine(onnx_file, log=lambda m: None)
    assert json.loads(result.engine.decode("utf-8"))["flags"] == []
    assert result.info["fp16"] is False and "no fast FP16" in result.info["precision_reason"]


def test_parser_errors_are_reported_per_node(install, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    trt = install(FakeTensorRT82())
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="stem_relu"), helper.make_node("Mod", ["y", "y"], ["z"],
                                                                                    name="head_mod")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])])
    onnx_file = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(onnx_file))
    trt.OnnxParser.errors = [_FakeParserError(1, "No importer registered for op: Mod"),
                             _FakeParserError(-1, "graph has no outputs")]
    with pytest.raises(OnnxParseError) as info:
        build_engine(onnx_file, log=lambda m: None)
    text = str(info.value)
    assert "2 errors" in text
    assert "node 1 'head_mod' (Mod): No importer registered for op: Mod [UNSUPPORTED_NODE]" in text
    assert "model: graph has no outputs" in text


def test_describe_parser_error_prefers_names_reported_by_tensorrt_10():
    error = _FakeParserError(3, "bad", name="reported_name", operator="Resize")
    nodes = [OnnxNode(i, "n{}".format(i), "Conv") for i in range(5)]
    assert describe_parser_error(error, nodes) == "node 3 'reported_name' (Resize): bad [UNSUPPORTED_NODE]"
    assert describe_parser_error(_FakeParserError(3, "bad"), nodes) == "node 3 'n3' (Conv): bad [UNSUPPORTED_NODE]"
    assert describe_parser_error(_FakeParserError(9, "bad"), nodes) == "node 9 '?' (?): bad [UNSUPPORTED_NODE]"


# --- TensorRTRunner control flow on the doubles -----------------------------------------------------------------


@pytest.mark.parametrize("make, api, call", [
    (FakeTensorRT82, "binding", "execute_async_v2"),
    (FakeTensorRT86, "tensor", "execute_async_v3"),
    (FakeTensorRT10, "tensor", "execute_async_v3"),
])
def test_tensorrt_runner_control_flow(install, make, api, call):
    install(make())
    x = np.arange(48, dtype=np.float32).reshape(1, 3, 4, 4)
    with TensorRTRunner(b"ENGINE") as runner:
        assert runner.io_api == api and runner.execution_call == call
        assert list(runner.input_specs()) == ["images"] and list(runner.output_specs()) == ["sum", "double"]
        outputs = runner.infer({"images": x})
        assert outputs["sum"][0, 0] == x.sum() and np.array_equal(outputs["double"], 2 * x)
        assert runner.last_gpu_ms == 0.25 and runner.last_gpu_total_ms == 0.25
        memory = runner.memory_info()
        assert memory["serialized_engine_bytes"] == 6 and memory["engine_device_memory_bytes"] == 4096
        assert memory["io_buffer_bytes"] == (48 + 1 + 48) * 4 and memory["load_delta_bytes"] >= memory["io_buffer_bytes"]
        with pytest.raises(ValueError, match="dtype float32"):
            runner.infer({"images": x.astype(np.float64)})
    assert FakePycuda.memory == {}  # every device buffer freed
    assert FakePycuda.log[:2] == ["init", "push"] and FakePycuda.log[-1] == "pop"
    assert FakePycuda.log.count("free") == 3


def test_tensorrt_runner_profiled_82_runs_synchronously(install):
    install(FakeTensorRT82())
    profiler = object()
    with TensorRTRunner(b"ENGINE", profiler=profiler) as runner:
        assert runner.execution_call == "execute_v2" and runner._context.profiler is profiler
        runner.infer({"images": np.ones((1, 3, 4, 4), np.float32)})
        assert runner.last_gpu_ms is None and runner._context.calls == ["execute_v2"]


def test_tensorrt_runner_reports_undeserializable_engine_and_cleans_up(install, tmp_path):
    install(FakeTensorRT10())
    engine_file = tmp_path / "old.engine"
    engine_file.write_bytes(b"garbage")
    runner = TensorRTRunner(engine_file)
    with pytest.raises(RuntimeError, match="could not deserialize the engine .*old.engine"):
        runner.activate()
    assert not runner.is_active and FakePycuda.log[-1] == "pop"


def test_engine_io_specs_refuses_dynamic_shapes():
    trt = FakeTensorRT10()
    engine = trt.ICudaEngine()
    engine.get_tensor_shape = lambda name: (-1, 3, 4, 4)
    with pytest.raises(ValueError, match="dynamic shape"):
        engine_io_specs(engine, trt)


def test_profile_engine_control_flow(install, tmp_path):
    from trt.profiler import profile_engine

    install(FakeTensorRT82())
    out = tmp_path / "layers.json"
    times = profile_engine(b"ENGINE", runs=3, warmup=1, json_path=out)
    data = json.loads(out.read_text())
    # The double never calls the profiler: only the wiring (sync execution on 8.2, JSON written) is checked here.
    assert data["execution_call"] == "execute_v2" and data["io_api"] == "binding" and times.runs == 0
    assert FakePycuda.memory == {}
