"""Self-test of a device: which parts of the deploy stack work here, checked against a numpy reference.

    python3 -m jetson.selftest [--require-trt] [--json OUT] [--verbose]

Checks, each printed as it completes: Python, numpy, the Jetson release (L4T/JetPack, power mode), cv2 with its
video I/O and GStreamer support (needed for CSI cameras), onnxruntime, tensorrt (version, API generation), pycuda
and the GPU, an FP16 engine built from the tiny model shipped in ``jetson/assets/tiny_selftest.onnx``, and that
engine's output and ONNX Runtime's output against `tiny_reference`, a numpy implementation of the same network
(Conv + Relu + Add + strided Conv + Resize(nearest, x2) + Concat + Conv + Sigmoid, weights from `tiny_weights`).

What "should work here": numpy, cv2 (with video writing) and the tiny model everywhere; tensorrt, pycuda, the engine
build, the TensorRT inference and cv2's GStreamer on a Jetson (``/etc/nv_tegra_release`` exists, or the file named
by ``$NV_TEGRA_RELEASE``) or with ``--require-trt``; anything that is importable must also pass its check (an
importable onnxruntime must match the reference). What is merely absent elsewhere (TensorRT on a desktop, ORT on
the Nano) is reported as MISSING, not as a failure.

Exit codes: 0 every check that should work here passed; 1 at least one did not (the FAIL lines say which and what
to do); 2 bad command-line arguments.

Device module: Python 3.6 syntax, numpy at module level; cv2, onnxruntime, tensorrt and pycuda imported lazily inside
the checks; never imports torch or onnx. The ONNX file is generated on the host by
``tests/fixtures/make_tiny_selftest_onnx.py`` from `tiny_weights` (so file and reference cannot drift apart
silently: the test suite regenerates and compares it).
"""

import argparse
import collections
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from jetson.tegra import tegra_release_path

__all__ = [
    "ASSET_PATH", "TINY_INPUT_NAME", "TINY_OUTPUT_NAME", "TINY_INPUT_SHAPE", "FP16_ATOL", "FP32_ATOL",
    "tiny_weights", "tiny_input", "conv2d", "tiny_reference", "Check", "run_selftest",
    "exit_code", "main",
]

ASSET_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "tiny_selftest.onnx")
TINY_INPUT_NAME = "x"
TINY_OUTPUT_NAME = "probs"
TINY_INPUT_SHAPE = (1, 3, 16, 16)
TINY_SEED = 20261122
# Sigmoid outputs in [0, 1] after four layers: FP16 kernels stay within a few 1e-3 of the float64 reference.
FP16_ATOL = 1e-2
FP32_ATOL = 1e-4

OK = "OK"
MISSING = "MISSING"
FAIL = "FAIL"
SKIP = "SKIP"
WARN = "WARN"
_MARKS = {OK: "[ ok ]", MISSING: "[miss]", FAIL: "[FAIL]", SKIP: "[skip]", WARN: "[warn]"}


# ------------------------------------------------------------------------------------------ the tiny network

def tiny_weights(seed=TINY_SEED):
    """The tiny network's parameters (float32), from numpy's legacy RandomState (a stream numpy keeps stable)."""
    rng = np.random.RandomState(seed)

    def draw(shape, scale):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return collections.OrderedDict([
        ("conv1_w", draw((8, 3, 3, 3), 0.3)), ("conv1_b", draw((8,), 0.1)),
        ("conv2_w", draw((8, 8, 1, 1), 0.3)), ("conv2_b", draw((8,), 0.1)),
        ("conv3_w", draw((8, 8, 3, 3), 0.15)), ("conv3_b", draw((8,), 0.1)),
        ("head_w", draw((4, 16, 1, 1), 0.3)), ("head_b", draw((4,), 0.1)),
    ])


def tiny_input(seed=TINY_SEED + 1):
    return np.random.RandomState(seed).uniform(-1.0, 1.0, TINY_INPUT_SHAPE).astype(np.float32)


def conv2d(x, weight, bias, stride=1, pad=0):
    """NCHW convolution in float64 (im2col + tensordot); ``weight`` is (O, C, K, K)."""
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    n, c, h, w = x.shape
    k = weight.shape[2]
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant")
    out_h = (h + 2 * pad - k) // stride + 1
    out_w = (w + 2 * pad - k) // stride + 1
    cols = np.empty((n, c, k, k, out_h, out_w), dtype=np.float64)
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = padded[:, :, i:i + stride * out_h:stride, j:j + stride * out_w:stride]
    out = np.tensordot(weight, cols, axes=([1, 2, 3], [1, 2, 3]))  # (O, N, H', W')
    return out.transpose(1, 0, 2, 3) + np.asarray(bias, dtype=np.float64)[None, :, None, None]


def tiny_reference(x, weights=None):
    """The tiny network in numpy (float64): what every backend's output is compared with."""
    p = tiny_weights() if weights is None else weights
    r1 = np.maximum(conv2d(x, p["conv1_w"], p["conv1_b"], pad=1), 0.0)
    added = r1 + conv2d(r1, p["conv2_w"], p["conv2_b"])
    r3 = np.maximum(conv2d(added, p["conv3_w"], p["conv3_b"], stride=2, pad=1), 0.0)
    # Resize nearest x2, coordinate_transformation_mode=asymmetric, nearest_mode=floor: out[i] = in[i // 2].
    up = r3.repeat(2, axis=2).repeat(2, axis=3)
    logits = conv2d(np.concatenate([up, added], axis=1), p["head_w"], p["head_b"])
    return 1.0 / (1.0 + np.exp(-logits))


# ---------------------------------------------------------------------------------------------------- checks

class Check(object):
    """One line of the checklist. ``required``: a FAIL (or a MISSING that should be there) fails the self-test."""

    def __init__(self, name, status, detail, required=False, data=None):
        self.name = name
        self.status = status
        self.detail = detail
        self.required = required
        self.data = data

    @property
    def failed(self):
        return self.status == FAIL or (self.required and self.status == MISSING)

    def line(self):
        mark = _MARKS[FAIL] if self.failed else _MARKS[self.status]
        return "{} {:<22} {}".format(mark, self.name, self.detail)

    def as_dict(self):
        return collections.OrderedDict([("name", self.name), ("status", FAIL if self.failed else self.status),
                                        ("detail", self.detail), ("required", self.required), ("data", self.data)])


def _exception_text(exc):
    return "{}: {}".format(type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "")


def _import(name):
    import importlib

    try:
        return importlib.import_module(name), None
    except Exception as exc:  # ImportError, or a broken build raising something else at import time
        return None, _exception_text(exc)


def _compare(name, got, reference, atol, what, required=True):
    got = np.asarray(got, dtype=np.float64)
    if got.shape != reference.shape:
        return Check(name, FAIL, "{} output shape {} != reference {}".format(what, got.shape, reference.shape),
                     required)
    diff = float(np.max(np.abs(got - reference)))
    data = {"max_abs_diff": diff, "atol": atol}
    if not diff <= atol:
        return Check(name, FAIL, "{} differs from the numpy reference: max |diff| {:.3g} > {:g}".format(
            what, diff, atol), required, data)
    return Check(name, OK, "{} matches the numpy reference (max |diff| {:.2g} <= {:g})".format(what, diff, atol),
                 required, data)


def _check_python():
    version = sys.version_info
    text = "{} ({})".format(platform.python_version(), sys.executable)
    if version < (3, 6):
        return Check("python", FAIL, text + ": needs Python >= 3.6", True)
    note = "" if version[:2] == (3, 6) else " (the Nano runs 3.6.9; this code also runs on newer Pythons)"
    return Check("python", OK, text + note)


def _check_jetson():
    path = tegra_release_path()
    if not os.path.isfile(path):
        return Check("jetson", SKIP, "not a Jetson ({} not found): TensorRT/pycuda/GStreamer are optional here".format(
            path)), False
    from runtime.environment import parse_nv_tegra_release, parse_nvpmodel

    with open(path) as handle:
        text = handle.read()
    try:
        release = parse_nv_tegra_release(text)
    except ValueError as exc:
        return Check("jetson", WARN, "{}: {}".format(path, exc)), True
    detail = "L4T {} (JetPack {}), board {}".format(release["l4t"], release["jetpack"] or "unknown",
                                                    release["board"])
    data = dict(release)
    if shutil.which("nvpmodel"):
        try:
            output = subprocess.run(["nvpmodel", "-q"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    universal_newlines=True, timeout=10).stdout
            mode = parse_nvpmodel(output)
            data.update(mode)
            detail += ", power mode {} ({})".format(mode["power_mode"], mode["power_mode_id"])
            if mode["power_mode_id"] not in (0, None):
                detail += ": not MAXN, run bash jetson/setup.sh --max-perf before measuring"
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            detail += ", power mode unknown ({})".format(_exception_text(exc))
    return Check("jetson", OK, detail, data=data), True


def _cv2_video_roundtrip(cv2):
    """Write 3 frames with the mp4v writer the camera demo uses, read them back; return None or a problem."""
    folder = tempfile.mkdtemp(prefix="jetson-selftest-")
    path = os.path.join(folder, "roundtrip.mp4")
    try:
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
        if not writer.isOpened():
            return "cv2.VideoWriter cannot open an mp4v file"
        frame = np.zeros((48, 64, 3), dtype=np.uint8)
        for value in (0, 120, 240):
            frame[:] = value
            writer.write(frame)
        writer.release()
        capture = cv2.VideoCapture(path)
        count = 0
        while True:
            ok, _ = capture.read()
            if not ok:
                break
            count += 1
        capture.release()
        if count != 3:
            return "wrote 3 frames to an mp4v file and read back {}".format(count)
        return None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check_cv2(on_jetson):
    checks = []
    cv2, error = _import("cv2")
    if cv2 is None:
        hint = ("on the Nano use JetPack's OpenCV (sudo apt-get install nvidia-opencv), never pip's opencv-python"
                if on_jetson else "pip install opencv-python-headless")
        return [Check("cv2", MISSING, "cannot import cv2 ({}): {}".format(error, hint), True),
                Check("cv2 GStreamer", SKIP, "needs cv2")], None
    location = getattr(cv2, "__file__", None) or "?"
    checks.append(Check("cv2", OK, "OpenCV {} ({})".format(cv2.__version__, location), True))
    problem = _cv2_video_roundtrip(cv2)
    checks.append(Check("cv2 video I/O", FAIL if problem else OK,
                        problem or "mp4v VideoWriter + VideoCapture work (camera demo --out)", True))
    from jetson.camera import cv2_video_backends

    backends = cv2_video_backends(cv2.getBuildInformation())
    gstreamer = backends.get("GStreamer", False)
    if gstreamer:
        checks.append(Check("cv2 GStreamer", OK, "built with GStreamer: CSI (nvarguscamerasrc) and RTSP pipelines",
                            on_jetson, backends))
    elif on_jetson:
        checks.append(Check("cv2 GStreamer", FAIL,
                            "this OpenCV has no GStreamer, so CSI cameras cannot be opened; it is probably pip's "
                            "opencv-python ({}): pip3 uninstall opencv-python opencv-python-headless, then use "
                            "JetPack's OpenCV 4.1.1".format(location), True, backends))
    else:
        checks.append(Check("cv2 GStreamer", MISSING,
                            "OpenCV without GStreamer: no CSI cameras here; files, USB and RTSP (FFMPEG: {}) work".format(
                                "yes" if backends.get("FFMPEG") else "no"), False, backends))
    return checks, cv2


def _check_onnxruntime(reference, x):
    ort, error = _import("onnxruntime")
    if ort is None:
        return [Check("onnxruntime", MISSING, "not installed ({}): only needed as the stand-in backend "
                                               "(--backend ort)".format(error))]
    checks = [Check("onnxruntime", OK, "onnxruntime {} ({})".format(
        ort.__version__, ", ".join(ort.get_available_providers())))]
    from runtime.runners import OnnxRuntimeRunner

    try:
        with OnnxRuntimeRunner(ASSET_PATH, threads=1) as runner:
            out = runner.infer({TINY_INPUT_NAME: x})[TINY_OUTPUT_NAME]
    except Exception as exc:
        checks.append(Check("ORT inference", FAIL, "tiny model on ONNX Runtime failed: {}".format(
            _exception_text(exc)), True))
        return checks
    checks.append(_compare("ORT inference", out, reference, FP32_ATOL, "ONNX Runtime (FP32, CPU)"))
    return checks


def _check_tensorrt(need_trt, reference, x, workspace_mib, log):
    """tensorrt, pycuda, GPU, engine build, TensorRT inference."""
    checks = []
    trt, error = _import("tensorrt")
    if trt is None:
        hint = ("it comes with JetPack (python3-libnvinfer, /usr/lib/python3.6/dist-packages/tensorrt); run with "
                "the system python3 (3.6)" if need_trt else "only needed on the Jetson or a CUDA desktop")
        checks.append(Check("tensorrt", MISSING, "cannot import tensorrt ({}): {}".format(error, hint), need_trt))
    else:
        from trt.compat import capabilities

        caps = capabilities(trt)
        status = OK if caps["supported"] else FAIL
        detail = "TensorRT {} (I/O API: {}, workspace API: {})".format(caps["version"], caps["io_api"],
                                                                        caps["workspace_api"])
        if not caps["supported"]:
            detail += ": " + caps["unsupported_reason"]
        checks.append(Check("tensorrt", status, detail, True, caps))

    cuda, error = _import("pycuda.driver")
    gpu_ok = False
    if cuda is None:
        hint = ("build it: bash jetson/setup.sh (pip3 install --user 'pycuda<=2022.1' with nvcc on PATH)"
                if need_trt else "only needed for TensorRT inference")
        checks.append(Check("pycuda", MISSING, "cannot import pycuda.driver ({}): {}".format(error, hint),
                            need_trt))
    else:
        from runtime.lazy import optional_version

        try:
            cuda.init()
            count = cuda.Device.count()
            if count < 1:
                raise RuntimeError("no CUDA device found")
            device = cuda.Device(0)
            major, minor = device.compute_capability()
            checks.append(Check("pycuda + GPU", OK, "pycuda {}, CUDA {}, GPU 0: {} (sm_{}{}, {:.0f} MiB)".format(
                optional_version("pycuda", "VERSION_TEXT"), ".".join(str(v) for v in cuda.get_version()),
                device.name(), major, minor, device.total_memory() / 1048576.0), True))
            gpu_ok = True
        except Exception as exc:
            checks.append(Check("pycuda + GPU", FAIL, "pycuda imports but CUDA does not work: {}".format(
                _exception_text(exc)), True))

    if trt is None or checks[0].status != OK:
        checks.append(Check("engine build", SKIP if not need_trt else FAIL, "needs a supported tensorrt",
                            need_trt))
        checks.append(Check("TensorRT inference", SKIP if not need_trt else FAIL, "needs an engine", need_trt))
        return checks

    from trt.builder import build_engine

    started = time.time()
    try:
        result = build_engine(ASSET_PATH, fp16=True, workspace_mib=workspace_mib, log=log)
    except Exception as exc:
        checks.append(Check("engine build", FAIL, "{} (workspace {} MiB)".format(_exception_text(exc), workspace_mib),
                            True))
        checks.append(Check("TensorRT inference", SKIP, "needs an engine", need_trt))
        return checks
    checks.append(Check("engine build", OK, "{} bytes in {:.1f} s ({})".format(
        len(result.engine), time.time() - started, result.info["precision_reason"]), True,
        dict(result.info)))
    if not gpu_ok:
        checks.append(Check("TensorRT inference", SKIP if not need_trt else FAIL, "needs pycuda and a GPU",
                            need_trt))
        return checks

    from runtime.runners import TensorRTRunner

    try:
        with TensorRTRunner(result.engine) as runner:
            out = runner.infer({TINY_INPUT_NAME: x})[TINY_OUTPUT_NAME]
            api = "{} / {}".format(runner.io_api, runner.execution_call)
    except Exception as exc:
        checks.append(Check("TensorRT inference", FAIL, _exception_text(exc), True))
        return checks
    atol = FP16_ATOL if result.info["fp16"] else FP32_ATOL * 10
    checks.append(_compare("TensorRT inference", out, reference, atol,
                           "TensorRT {} ({})".format("FP16" if result.info["fp16"] else "FP32", api)))
    return checks


def run_selftest(require_trt=False, workspace_mib=64, log=None, echo=None):
    """All checks, in order; ``echo`` (default: print) receives each checklist line as it is decided."""
    echo = echo or (lambda text: print(text, flush=True))
    quiet = log or (lambda text: None)
    checks = []

    def add(found):
        for check in found if isinstance(found, list) else [found]:
            checks.append(check)
            echo(check.line())

    add(_check_python())
    add(Check("numpy", OK, "numpy {}".format(np.__version__), True))
    jetson_check, on_jetson = _check_jetson()
    add(jetson_check)
    need_trt = bool(require_trt or on_jetson)

    if not os.path.isfile(ASSET_PATH):
        add(Check("tiny model", FAIL, "{} is missing: the checkout is incomplete".format(ASSET_PATH), True))
        return checks
    from runtime.onnx_wire import read_onnx_signature

    signature = read_onnx_signature(ASSET_PATH)
    add(Check("tiny model", OK, "{} (opset {}, {} bytes)".format(os.path.relpath(ASSET_PATH), signature["opset"],
                                                                 os.path.getsize(ASSET_PATH)), True))
    x = tiny_input()
    reference = tiny_reference(x)

    cv2_checks, _ = _check_cv2(on_jetson)
    add(cv2_checks)
    add(_check_onnxruntime(reference, x))
    add(_check_tensorrt(need_trt, reference, x, workspace_mib, quiet))
    return checks


def exit_code(checks):
    return 1 if any(check.failed for check in checks) else 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m jetson.selftest",
        description="Check what works on this device (TensorRT, pycuda, cv2 + GStreamer, ONNX Runtime) against a "
                    "numpy reference of a tiny network.",
        epilog="Exit codes: 0 everything that should work here works; 1 something that should work failed; 2 bad "
               "arguments. On a Jetson (/etc/nv_tegra_release, or $NV_TEGRA_RELEASE) TensorRT, pycuda and "
               "GStreamer are required.")
    parser.add_argument("--require-trt", action="store_true",
                        help="treat TensorRT + pycuda as required even when this is not a Jetson (CUDA desktops)")
    parser.add_argument("--workspace-mib", type=int, default=64, help="builder workspace for the tiny engine")
    parser.add_argument("--json", metavar="OUT", help="also write the checklist as JSON")
    parser.add_argument("--verbose", action="store_true", help="print the TensorRT builder's messages")
    args = parser.parse_args(argv)

    print("jetson.selftest: what works on this device", flush=True)
    log = (lambda text: print("       " + text, flush=True)) if args.verbose else None
    checks = run_selftest(require_trt=args.require_trt, workspace_mib=args.workspace_mib, log=log)
    code = exit_code(checks)
    failed = [c.name for c in checks if c.failed]
    missing = [c.name for c in checks if c.status == MISSING and not c.failed]
    print("")
    print("{} checks: {} ok, {} missing (optional here), {} failed{} -> exit {}".format(
        len(checks), sum(1 for c in checks if c.status == OK and not c.failed), len(missing), len(failed),
        " ({})".format(", ".join(failed)) if failed else "", code), flush=True)
    if args.json:
        from runtime.fileio import atomic_write_json

        atomic_write_json(args.json, collections.OrderedDict([
            ("format", "jetson-compress-selftest"), ("format_version", 1), ("exit_code", code),
            ("checks", [c.as_dict() for c in checks])]))
    return code


if __name__ == "__main__":
    sys.exit(main())
