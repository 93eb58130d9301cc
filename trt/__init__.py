"""TensorRT engines on the device: version/feature compatibility (8.2 - 10.x), FP16 builds, engine cache, per-layer
profiling.

Device package: Python 3.6 syntax; tensorrt and pycuda are imported lazily inside functions; never imports torch or
onnx.
"""
