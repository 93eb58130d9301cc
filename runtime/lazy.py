"""Lazy imports of the optional heavy packages of the device side (tensorrt, pycuda, cv2, onnxruntime).

Device module (runs on the Jetson Nano): Python 3.6 syntax, imports nothing but the standard library at module
level; never imports torch or onnx. Every device module imports these packages inside functions through
`require`, so that any module imports on any machine and a missing package gives one clear sentence.
"""

import importlib

__all__ = ["MissingDependencyError", "require", "optional_version"]

# What to do when a package is missing, per top-level package name.
_HINTS = {
    "tensorrt": ("on a Jetson it comes with JetPack (/usr/lib/python3.6/dist-packages/tensorrt); on a desktop "
                 "install TensorRT 8.2 to 10.x with its Python bindings"),
    "pycuda": ("build it from source against the local CUDA (on the Nano: pip3 install pycuda==2022.1 with nvcc on "
               "PATH and --cuda-root=/usr/local/cuda)"),
    "cv2": ("on the Nano use JetPack's OpenCV (python3-opencv; pip's opencv-python breaks CSI cameras); elsewhere "
            "pip install opencv-python-headless"),
    "onnxruntime": "pip install onnxruntime",
    "numpy": "pip install numpy",
}


class MissingDependencyError(ImportError):
    """An optional package needed for the requested operation cannot be imported."""


def require(module_name, purpose):
    """Import ``module_name`` (e.g. ``"pycuda.driver"``) or raise `MissingDependencyError` in one sentence.

    Args:
        module_name: dotted module name.
        purpose: what needs it, e.g. ``"TensorRTRunner"``; it starts the error message.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        top = module_name.split(".")[0]
        hint = _HINTS.get(top, "install it")
        raise MissingDependencyError(
            "{} needs the Python package '{}', which cannot be imported here ({}): {}.".format(
                purpose, top, exc, hint))


def optional_version(module_name, attribute="__version__"):
    """The version string of an importable module, or None when it cannot be imported (for reports only)."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    value = getattr(module, attribute, None)
    if callable(value):
        value = value()
    return None if value is None else str(value)
