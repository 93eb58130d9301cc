"""Every TensorRT name the device code uses, checked against the Python API of real TensorRT releases.

``tests/fixtures/tensorrt_api/<version>.json`` lists the classes, methods, properties and enum members of NVIDIA's
own bindings for TensorRT 8.6.1, 10.0.1, 10.16.1.11 and 11.0.0.114 (made by ``tests/fixtures/list_tensorrt_api.py``
from the wheels on PyPI; names only: the bindings were loaded against stand-in libraries, nothing ran). The Nano's
8.2 has no such wheel; 8.6.1 is the nearest real release, and it still has 8.2's binding API and workspace setter.

Three checks tie the code, its test doubles (tests/test_trt_compat.py) and real TensorRT together:
1. ``USED`` — every name trt/ and runtime/runners.py use — exists in the releases where the code relies on it, and
   is absent where the code feature-tests it away (so those ``hasattr`` branches are real, not imagined);
2. every API name the doubles offer is in ``USED`` and exists in the real release the double is shaped after;
3. every name in ``USED`` appears in the device code (the table cannot go stale).
What this does not prove: signatures, return values and behaviour — those need a GPU (jetson/NEVER_RUN_ON_DEVICE.md).
"""
from __future__ import annotations

import json
import re

import pytest

from tests import test_trt_compat as doubles
from tests.conftest import REPO

LISTINGS = {path.stem: json.loads(path.read_text())
            for path in sorted((REPO / "tests" / "fixtures" / "tensorrt_api").glob("*.json"))}
V86, V10_FIRST, V10_RECENT, V11 = "8.6.1", "10.0.1", "10.16.1.11", "11.0.0.114"
ALL_SUPPORTED = {V86, V10_FIRST, V10_RECENT}
TENSORRT_10 = {V10_FIRST, V10_RECENT}

# (where, name, releases that must have it, releases that must not). "module" is the tensorrt module itself.
USED = [
    ("module", "Logger", ALL_SUPPORTED, set()),
    ("module", "Builder", ALL_SUPPORTED, set()),
    ("module", "OnnxParser", ALL_SUPPORTED, set()),
    ("module", "Runtime", ALL_SUPPORTED, set()),
    ("module", "BuilderFlag", ALL_SUPPORTED, set()),
    ("module", "MemoryPoolType", ALL_SUPPORTED, set()),
    ("module", "NetworkDefinitionCreationFlag", ALL_SUPPORTED, set()),
    ("module", "TensorIOMode", ALL_SUPPORTED, set()),
    ("module", "nptype", ALL_SUPPORTED, set()),
    ("module", "IProfiler", ALL_SUPPORTED, set()),
    ("module", "IBuilderConfig", ALL_SUPPORTED, set()),
    ("module", "ICudaEngine", ALL_SUPPORTED, set()),
    ("Logger", "WARNING", ALL_SUPPORTED, set()),
    ("Builder", "platform_has_fast_fp16", ALL_SUPPORTED, set()),
    ("Builder", "create_network", ALL_SUPPORTED, set()),
    ("Builder", "create_builder_config", ALL_SUPPORTED, set()),
    ("Builder", "build_serialized_network", ALL_SUPPORTED, set()),
    ("IBuilderConfig", "set_flag", ALL_SUPPORTED, set()),
    ("IBuilderConfig", "create_timing_cache", ALL_SUPPORTED, set()),
    ("IBuilderConfig", "set_timing_cache", ALL_SUPPORTED, set()),
    ("IBuilderConfig", "get_timing_cache", ALL_SUPPORTED, set()),
    ("IBuilderConfig", "set_memory_pool_limit", ALL_SUPPORTED, set()),
    ("IBuilderConfig", "max_workspace_size", {V86}, TENSORRT_10),  # 8.2's only setter; gone in 10
    ("MemoryPoolType", "WORKSPACE", ALL_SUPPORTED, set()),
    ("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH", ALL_SUPPORTED, {V11}),  # deprecated in 10, gone in 11
    ("BuilderFlag", "FP16", ALL_SUPPORTED, {V11}),  # why trt.compat refuses 11
    ("TensorIOMode", "INPUT", ALL_SUPPORTED, set()),
    ("OnnxParser", "parse", ALL_SUPPORTED, set()),
    ("OnnxParser", "num_errors", ALL_SUPPORTED, set()),
    ("OnnxParser", "get_error", ALL_SUPPORTED, set()),
    ("ParserError", "node", ALL_SUPPORTED, set()),
    ("ParserError", "desc", ALL_SUPPORTED, set()),
    ("ParserError", "code", ALL_SUPPORTED, set()),
    ("ParserError", "node_name", TENSORRT_10, {V86}),  # 8.x gives only the node index
    ("ParserError", "node_operator", TENSORRT_10, {V86}),
    ("ITimingCache", "serialize", ALL_SUPPORTED, set()),
    ("Runtime", "deserialize_cuda_engine", ALL_SUPPORTED, set()),
    ("ICudaEngine", "create_execution_context", ALL_SUPPORTED, set()),
    ("ICudaEngine", "num_io_tensors", ALL_SUPPORTED, set()),
    ("ICudaEngine", "get_tensor_name", ALL_SUPPORTED, set()),
    ("ICudaEngine", "get_tensor_mode", ALL_SUPPORTED, set()),
    ("ICudaEngine", "get_tensor_shape", ALL_SUPPORTED, set()),
    ("ICudaEngine", "get_tensor_dtype", ALL_SUPPORTED, set()),
    ("ICudaEngine", "num_bindings", {V86}, TENSORRT_10),  # the binding API: 8.2's only one, gone in 10
    ("ICudaEngine", "get_binding_name", {V86}, TENSORRT_10),
    ("ICudaEngine", "binding_is_input", {V86}, TENSORRT_10),
    ("ICudaEngine", "get_binding_shape", {V86}, TENSORRT_10),
    ("ICudaEngine", "get_binding_dtype", {V86}, TENSORRT_10),
    ("ICudaEngine", "device_memory_size", ALL_SUPPORTED, {V11}),
    ("ICudaEngine", "device_memory_size_v2", {V10_RECENT}, {V86, V10_FIRST}),  # preferred where it exists
    ("IExecutionContext", "set_tensor_address", ALL_SUPPORTED, set()),
    ("IExecutionContext", "execute_async_v3", ALL_SUPPORTED, set()),
    ("IExecutionContext", "execute_async_v2", {V86}, TENSORRT_10),
    ("IExecutionContext", "execute_v2", ALL_SUPPORTED, set()),
    ("IExecutionContext", "profiler", ALL_SUPPORTED, set()),
    ("IProfiler", "report_layer_time", ALL_SUPPORTED, set()),
]
# Attributes of the doubles that record what the code did (for the tests' assertions), not TensorRT API.
BOOKKEEPING = {"severity", "logger", "fast_fp16", "config_cls", "network_flags", "flags", "workspace_calls",
               "timing_cache", "network", "errors", "parsed", "data", "engine_cls", "calls", "addresses"}
# The real releases each double is shaped after (8.2 has no wheel: 8.6.1 keeps its API).
DOUBLES = {"FakeTensorRT82": {V86}, "FakeTensorRT86": {V86}, "FakeTensorRT10": TENSORRT_10, "FakeTensorRT11": {V11}}


def public_names(obj, bookkeeping) -> set:
    """A test double's API names: its public attributes less those that only record calls for the tests."""
    return {a for a in dir(obj) if not a.startswith("_")} - set(bookkeeping)


def assert_used_in_code(used, paths):
    """Every ``(where, name)`` of ``used`` occurs as a word in the files ``paths`` (so a table of names cannot go
    stale)."""
    source = "\n".join(path.read_text() for path in paths)
    for where, name in used:
        assert re.search(r"\b{}\b".format(re.escape(name)), source), f"{where}.{name} is not in the device code"


def real_names(version: str, where: str):
    listing = LISTINGS[version]
    names = listing["module"] if where == "module" else listing["classes"][where]
    assert names is not None, f"TensorRT {version} has no {where}"
    return set(names)


def test_listings_are_the_releases_they_name():
    assert sorted(LISTINGS) == sorted([V86, V10_FIRST, V10_RECENT, V11])
    for version, listing in LISTINGS.items():
        assert listing["version"] == version and "PyPI" in listing["source"]
        assert len(listing["module"]) > 150  # the whole module, not a stub


@pytest.mark.parametrize("where, name, present, absent", USED, ids=[f"{w}.{n}" for w, n, _, _ in USED])
def test_used_name_exists_where_the_code_relies_on_it(where, name, present, absent):
    for version in present:
        assert name in real_names(version, where), f"TensorRT {version}: {where} has no {name}"
    for version in absent:
        assert name not in real_names(version, where), f"TensorRT {version}: {where} still has {name}"


def double_api(module) -> dict:
    """{real class name: API names} offered by one fake tensorrt module and the objects it hands out."""
    def public(obj):
        return public_names(obj, BOOKKEEPING)

    logger = module.Logger(module.Logger.WARNING)
    builder = module.Builder(logger)
    config = builder.create_builder_config()
    network = builder.create_network(0)
    engine = module.ICudaEngine()
    api = {
        "module": public(module),
        "Logger": public(logger), "Builder": public(builder), "IBuilderConfig": public(config),
        "INetworkDefinition": public(network), "OnnxParser": public(module.OnnxParser(network, logger)),
        "ITimingCache": public(config.create_timing_cache(b"")), "Runtime": public(module.Runtime(logger)),
        "ICudaEngine": public(engine), "IExecutionContext": public(engine.create_execution_context()),
        "BuilderFlag": public(module.BuilderFlag), "MemoryPoolType": public(module.MemoryPoolType),
        "NetworkDefinitionCreationFlag": public(module.NetworkDefinitionCreationFlag),
        "TensorIOMode": public(module.TensorIOMode),
    }
    # the parser errors the tests make: with the node's name and operator as TensorRT 10 reports them, else without
    reports_names = int(module.__version__.split(".")[0]) >= 10
    api["ParserError"] = public(doubles._FakeParserError(0, "d", *(("n", "Conv") if reports_names else ())))
    return api


@pytest.mark.parametrize("double", sorted(DOUBLES))
def test_doubles_offer_only_real_names_that_the_table_lists(double):
    module = getattr(doubles, double)()
    listed = {(where, name) for where, name, _, _ in USED}
    for where, names in double_api(module).items():
        for name in names:
            assert (where, name) in listed, f"{double} offers {where}.{name}, which USED does not list"
            for version in DOUBLES[double]:
                assert name in real_names(version, where), f"{double} offers {where}.{name}; {version} has not"


def test_every_listed_name_is_used_by_the_device_code():
    assert_used_in_code([(where, name) for where, name, _, _ in USED],
                        sorted((REPO / "trt").glob("*.py")) + [REPO / "runtime" / "runners.py"])


def shaped_like(version: str):
    """A namespace with the real release's module names, classes holding exactly their real attribute names (values
    are placeholders: only presence is real), so that `trt.compat`'s feature tests run on the real API's shape."""
    listing = LISTINGS[version]
    module = type("tensorrt", (), {"__version__": version})
    for name in listing["module"]:
        attributes = listing["classes"].get(name)
        setattr(module, name, type(name, (), dict.fromkeys(attributes, None)) if attributes is not None else None)
    return module


@pytest.mark.parametrize("version, workspace, io, supported", [
    (V86, "memory_pool_limit", "tensor", True), (V10_FIRST, "memory_pool_limit", "tensor", True),
    (V10_RECENT, "memory_pool_limit", "tensor", True), (V11, "memory_pool_limit", "tensor", False)])
def test_feature_selection_on_the_real_api_shapes(version, workspace, io, supported):
    from trt import compat

    found = compat.capabilities(shaped_like(version))
    assert (found["workspace_api"], found["io_api"], found["supported"]) == (workspace, io, supported)
    assert found["build_serialized_network"] and found["timing_cache"]
    assert found["explicit_batch_flag"] == version.startswith("8.")
    if not supported:
        assert "BuilderFlag.FP16" in found["unsupported_reason"]
