"""Runners: one interface over ONNX Runtime and TensorRT (+ pycuda), interchangeable in every measurement.

Device module (runs on the Jetson Nano): Python 3.6 syntax; numpy at module level; onnxruntime, tensorrt and pycuda
are imported lazily inside `activate`; never imports torch or onnx.

Lifecycle (as Polygraphy's runners)::

    with TensorRTRunner("pruned.engine") as runner:   # activate(): CUDA context, engine, buffers
        specs = runner.input_specs()                   # name -> TensorSpec(name, shape, dtype)
        outputs = runner.infer({"images": x})          # dict name -> numpy array
        runner.last_gpu_ms                             # GPU time of the last execution (CUDA events) or None
                                                       # deactivate(): buffers, engine, context released

``infer`` checks the feed: every input present, no extra names, exact shape and dtype (no silent casts).
"""

import collections
import os

import numpy as np

from runtime.lazy import require
from trt.compat import engine_device_memory, execution_call, get_logger, import_tensorrt, io_api, trt_version

__all__ = ["TensorSpec", "Runner", "OnnxRuntimeRunner", "TensorRTRunner", "check_feed", "engine_io_specs"]

# shape: tuple of ints (a dimension that is not fixed is None); dtype: numpy dtype.
TensorSpec = collections.namedtuple("TensorSpec", ["name", "shape", "dtype"])


def check_feed(feed, specs):
    """Validate ``feed`` (dict name -> array) against ``specs`` (ordered name -> TensorSpec); raise ValueError."""
    if not isinstance(feed, dict):
        raise ValueError("feed must be a dict of input name -> numpy array; got {}".format(type(feed).__name__))
    missing = [name for name in specs if name not in feed]
    extra = sorted(name for name in feed if name not in specs)
    if missing or extra:
        raise ValueError("feed does not match the model inputs: missing {}, unexpected {} (inputs are {})".format(
            missing, extra, list(specs)))
    for name, spec in specs.items():
        array = feed[name]
        if not isinstance(array, np.ndarray):
            raise ValueError("input '{}' must be a numpy array; got {}".format(name, type(array).__name__))
        if array.dtype != spec.dtype:
            raise ValueError("input '{}' must have dtype {}; got {} (convert it explicitly)".format(
                name, spec.dtype, array.dtype))
        shape_ok = array.ndim == len(spec.shape) and all(
            want is None or int(want) == got for want, got in zip(spec.shape, array.shape))
        if not shape_ok:
            raise ValueError("input '{}' must have shape {}; got {}".format(name, tuple(spec.shape), array.shape))


class Runner(object):
    """Base of all runners: the activate / infer / deactivate lifecycle and feed checks."""

    name = "runner"

    def __init__(self):
        self.is_active = False
        self.last_gpu_ms = None  # GPU time of the last inference, if the backend measures it
        self._inputs = collections.OrderedDict()
        self._outputs = collections.OrderedDict()

    def activate(self):
        if self.is_active:
            raise RuntimeError("{} is already active; deactivate it first".format(self.name))
        self._activate()
        self.is_active = True
        return self

    def deactivate(self):
        if not self.is_active:
            return
        try:
            self._deactivate()
        finally:
            self.is_active = False

    def __enter__(self):
        return self.activate()

    def __exit__(self, exc_type, exc_value, traceback):
        self.deactivate()
        return False

    def _require_active(self, what):
        if not self.is_active:
            raise RuntimeError("{}.{}() needs an active runner: use 'with runner:' or call activate()".format(
                self.name, what))

    def input_specs(self):
        """Ordered dict input name -> TensorSpec."""
        self._require_active("input_specs")
        return collections.OrderedDict(self._inputs)

    def output_specs(self):
        """Ordered dict output name -> TensorSpec."""
        self._require_active("output_specs")
        return collections.OrderedDict(self._outputs)

    def infer(self, feed):
        """Run one inference: dict input name -> array -> ordered dict output name -> array."""
        self._require_active("infer")
        check_feed(feed, self._inputs)
        return self._infer(feed)

    def memory_info(self):
        """Backend memory figures in bytes (empty when the backend reports none)."""
        return {}

    # Subclasses implement these.
    def _activate(self):
        raise NotImplementedError

    def _deactivate(self):
        raise NotImplementedError

    def _infer(self, feed):
        raise NotImplementedError


# --- ONNX Runtime ----------------------------------------------------------------------------------------------

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def _ort_spec(node_arg):
    if node_arg.type not in _ORT_TYPES:
        raise ValueError("tensor '{}' has type {} which this runner does not map to numpy".format(
            node_arg.name, node_arg.type))
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in node_arg.shape)
    return TensorSpec(node_arg.name, shape, np.dtype(_ORT_TYPES[node_arg.type]))


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime backend: the stand-in on machines without TensorRT, and the host-side reference.

    Args:
        onnx_path: the ONNX file.
        providers: ONNX Runtime execution providers; default ``["CPUExecutionProvider"]`` (never a silent GPU).
        threads: intra-op threads (None: ONNX Runtime's default).
    """

    name = "OnnxRuntimeRunner"

    def __init__(self, onnx_path, providers=None, threads=None):
        Runner.__init__(self)
        self.onnx_path = os.fspath(onnx_path)
        self.providers = list(providers) if providers is not None else ["CPUExecutionProvider"]
        self.threads = threads
        self.providers_used = None
        self._session = None
        self._output_names = []

    def _activate(self):
        ort = require("onnxruntime", "OnnxRuntimeRunner")
        if not os.path.isfile(self.onnx_path):
            raise IOError("ONNX file not found: {}".format(self.onnx_path))
        options = ort.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = int(self.threads)
        self._session = ort.InferenceSession(self.onnx_path, sess_options=options, providers=self.providers)
        self.providers_used = list(self._session.get_providers())
        self._inputs = collections.OrderedDict((a.name, _ort_spec(a)) for a in self._session.get_inputs())
        self._outputs = collections.OrderedDict((a.name, _ort_spec(a)) for a in self._session.get_outputs())
        self._output_names = list(self._outputs)

    def _deactivate(self):
        self._session = None

    def _infer(self, feed):
        values = self._session.run(self._output_names, feed)
        return collections.OrderedDict(zip(self._output_names, values))


# --- TensorRT + pycuda -----------------------------------------------------------------------------------------


def engine_io_specs(engine, trt):
    """[(TensorSpec, is_input)] of an engine, in engine order, through whichever I/O API the engine has.

    Binding API (8.2): ``num_bindings``, ``get_binding_name``, ``binding_is_input``, ``get_binding_shape``,
    ``get_binding_dtype``. Tensor API (8.5+, 10): ``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``,
    ``get_tensor_shape``, ``get_tensor_dtype``. Dynamic dimensions (-1) are refused: bundles have static shapes.
    """
    api = io_api(engine)
    result = []
    if api == "tensor":
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            result.append((TensorSpec(name, shape, dtype), is_input))
    else:
        for index in range(engine.num_bindings):
            name = engine.get_binding_name(index)
            is_input = bool(engine.binding_is_input(index))
            shape = tuple(int(d) for d in engine.get_binding_shape(index))
            dtype = np.dtype(trt.nptype(engine.get_binding_dtype(index)))
            result.append((TensorSpec(name, shape, dtype), is_input))
    for spec, _ in result:
        if any(d < 0 for d in spec.shape):
            raise ValueError("engine tensor '{}' has a dynamic shape {}; this runner needs static shapes (export the "
                             "ONNX with a fixed input size)".format(spec.name, spec.shape))
    return api, result


class TensorRTRunner(Runner):
    """TensorRT engine on pycuda: page-locked host buffers, device buffers, one stream, async copies.

    ``last_gpu_ms`` is the execution alone (CUDA events around the execute call); ``last_gpu_total_ms`` adds the
    host<->device copies. Both are None when not measurable (profiled runs on TensorRT < 8.5 execute synchronously).
    Use a runner from the thread that activated it (the CUDA context is pushed on that thread).

    Args:
        engine: path of a serialized engine, or its bytes.
        device: CUDA device index.
        profiler: a ``trt.IProfiler`` to attach (see `trt.profiler`); profiling slows execution down.
        copy_outputs: return copies (True) or the page-locked buffers themselves, overwritten by the next infer.
    """

    name = "TensorRTRunner"

    def __init__(self, engine, device=0, profiler=None, copy_outputs=True):
        Runner.__init__(self)
        if isinstance(engine, (bytes, bytearray, memoryview)):
            self._engine_path = None
            self._engine_bytes = bytes(engine)
        else:
            self._engine_path = os.fspath(engine)
            self._engine_bytes = None
        self.device = int(device)
        self.profiler = profiler
        self.copy_outputs = copy_outputs
        self.last_gpu_total_ms = None
        self.trt_version = None
        self.io_api = None
        self.execution_call = None
        self._memory = {}
        self._cuda = None
        self._cuda_context = None
        self._runtime = None
        self._engine = None
        self._context = None
        self._host = collections.OrderedDict()
        self._device = collections.OrderedDict()
        self._bindings = []
        self._stream = None
        self._events = None

    @property
    def source(self):
        return self._engine_path if self._engine_path is not None else "<engine bytes>"

    def _activate(self):
        trt = import_tensorrt("TensorRTRunner")
        cuda = require("pycuda.driver", "TensorRTRunner")
        self._cuda = cuda
        self.trt_version = trt_version(trt)
        cuda.init()
        # NOTE: the primary context is the one the CUDA runtime (used inside TensorRT) also uses.
        context = cuda.Device(self.device).retain_primary_context()
        context.push()
        self._cuda_context = context
        try:
            self._load(trt, cuda)
        except BaseException:
            self._release()
            raise

    def _load(self, trt, cuda):
        self._inputs = collections.OrderedDict()
        self._outputs = collections.OrderedDict()
        self.last_gpu_ms = None
        self.last_gpu_total_ms = None
        if self._engine_path is not None:
            with open(self._engine_path, "rb") as handle:
                data = handle.read()
        else:
            data = self._engine_bytes
        free_before, total = cuda.mem_get_info()
        self._runtime = trt.Runtime(get_logger(trt))
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise RuntimeError(
                "TensorRT {} could not deserialize the engine {}: it was built by another TensorRT version or for "
                "another GPU, or memory ran out; rebuild it on this device (trt.cache.engine_for_onnx)".format(
                    ".".join(str(v) for v in self.trt_version), self.source))
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise RuntimeError("TensorRT could not create an execution context for {} (out of device memory?)".format(
                self.source))
        self.io_api, io = engine_io_specs(self._engine, trt)
        for spec, is_input in io:
            host = cuda.pagelocked_empty(spec.shape, spec.dtype)
            device = cuda.mem_alloc(max(host.nbytes, 1))
            self._host[spec.name] = host
            self._device[spec.name] = device
            self._bindings.append(int(device))
            (self._inputs if is_input else self._outputs)[spec.name] = spec
            if self.io_api == "tensor":
                self._context.set_tensor_address(spec.name, int(device))
        self._stream = cuda.Stream()
        self._events = [cuda.Event() for _ in range(4)]
        if self.profiler is not None:
            self._context.profiler = self.profiler
        self.execution_call = execution_call(self.io_api, self.profiler is not None, self.trt_version)
        free_after, _ = cuda.mem_get_info()
        self._memory = collections.OrderedDict([
            ("serialized_engine_bytes", len(data)),
            ("engine_device_memory_bytes", engine_device_memory(self._engine)),
            ("io_buffer_bytes", int(sum(h.nbytes for h in self._host.values()))),
            ("cuda_total_bytes", int(total)),
            ("cuda_free_before_load_bytes", int(free_before)),
            ("cuda_free_after_load_bytes", int(free_after)),
            # Engine weights + execution context scratch + I/O buffers (+ lazily loaded kernels, cuDNN/cuBLAS).
            ("load_delta_bytes", int(free_before) - int(free_after)),
        ])

    def memory_info(self):
        return dict(self._memory)

    def _infer(self, feed):
        cuda = self._cuda
        stream = self._stream
        start, exec_start, exec_end, end = self._events
        for name in self._inputs:
            np.copyto(self._host[name], feed[name])
        start.record(stream)
        for name in self._inputs:
            cuda.memcpy_htod_async(self._device[name], self._host[name], stream)
        if self.execution_call == "execute_v2":
            stream.synchronize()
            ok = self._context.execute_v2(self._bindings)
        else:
            exec_start.record(stream)
            if self.execution_call == "execute_async_v3":
                ok = self._context.execute_async_v3(stream.handle)
            else:
                ok = self._context.execute_async_v2(self._bindings, stream.handle)
            exec_end.record(stream)
        if not ok:
            raise RuntimeError("TensorRT {} returned failure for {}".format(self.execution_call, self.source))
        for name in self._outputs:
            cuda.memcpy_dtoh_async(self._host[name], self._device[name], stream)
        end.record(stream)
        end.synchronize()
        self.last_gpu_total_ms = start.time_till(end)
        self.last_gpu_ms = exec_start.time_till(exec_end) if self.execution_call != "execute_v2" else None
        return collections.OrderedDict(
            (name, self._host[name].copy() if self.copy_outputs else self._host[name]) for name in self._outputs)

    def _deactivate(self):
        self._release()

    def _release(self):
        """Free everything in reverse order of creation, while the CUDA context is still current."""
        try:
            if self._stream is not None:
                self._stream.synchronize()
            self._events = None
            self._stream = None
            for device in self._device.values():
                device.free()
            for host in self._host.values():
                base = getattr(host, "base", None)
                if base is not None and hasattr(base, "free"):
                    base.free()
            self._device.clear()
            self._host.clear()
            self._bindings = []
            self._context = None
            self._engine = None
            self._runtime = None
        finally:
            if self._cuda_context is not None:
                self._cuda_context.pop()
                self._cuda_context = None  # pycuda releases the retained primary context with this object
