"""What a measurement was taken on: platform, package versions, CPU, Jetson L4T/JetPack and power mode.

Device module: Python 3.6 syntax, standard library at module level; optional packages imported lazily inside
`environment`; never imports torch or onnx. Every figure is read, never assumed: a value that cannot be read is
None (with the reason where useful). ``jetson_clocks`` state is not read (it needs root) and is reported so.
"""

import collections
import os
import platform
import re
import shutil
import subprocess

from runtime.lazy import optional_version

__all__ = ["JETPACK_BY_L4T", "parse_nv_tegra_release", "parse_nvpmodel", "cpu_model", "device_model", "environment"]

# L4T release -> JetPack, for the original Nano's last line (jetson-nano.md).
JETPACK_BY_L4T = {
    "32.6.1": "4.6",
    "32.7.1": "4.6.1",
    "32.7.2": "4.6.2",
    "32.7.3": "4.6.3",
    "32.7.4": "4.6.4",
    "32.7.5": "4.6.5",
    "32.7.6": "4.6.6",
}


def parse_nv_tegra_release(text):
    """``# R32 (release), REVISION: 7.1, GCID: ..., BOARD: t210ref, ...`` -> {l4t: 32.7.1, board, jetpack}."""
    match = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if match is None:
        raise ValueError("not an /etc/nv_tegra_release line: {!r}".format(text[:120]))
    l4t = "{}.{}".format(match.group(1), match.group(2).strip("."))
    board = re.search(r"BOARD:\s*([^,\s]+)", text)
    return collections.OrderedDict([
        ("l4t", l4t),
        ("board", board.group(1) if board else None),
        ("jetpack", JETPACK_BY_L4T.get(l4t)),
    ])


def parse_nvpmodel(text):
    """``nvpmodel -q`` output -> {power_mode: 'MAXN', power_mode_id: 0} (warning lines are ignored)."""
    name = re.search(r"NV Power Mode:\s*(\S+)", text)
    if name is None:
        raise ValueError("no 'NV Power Mode:' in nvpmodel output: {!r}".format(text[:120]))
    mode_id = None
    after = text[name.end():]
    for line in after.splitlines():
        if line.strip().isdigit():
            mode_id = int(line.strip())
            break
    return collections.OrderedDict([("power_mode", name.group(1)), ("power_mode_id", mode_id)])


def _read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except (IOError, OSError):
        return None


def cpu_model(cpuinfo_text=None):
    """CPU model from /proc/cpuinfo (``model name``; ARM boards: ``Hardware`` or ``CPU part``), else platform."""
    text = _read("/proc/cpuinfo") if cpuinfo_text is None else cpuinfo_text
    if text:
        for field in ("model name", "Hardware", "Model"):
            match = re.search(r"^{}\s*:\s*(.+)$".format(field), text, re.MULTILINE)
            if match:
                return match.group(1).strip()
        part = re.search(r"^CPU part\s*:\s*(\S+)$", text, re.MULTILINE)
        if part:
            # 0xd07 is the Nano's Cortex-A57.
            return {"0xd07": "ARM Cortex-A57"}.get(part.group(1), "ARM CPU part {}".format(part.group(1)))
    return platform.processor() or None


def device_model():
    text = _read("/proc/device-tree/model")
    return text.strip("\x00 \n") if text else None


def _run_quiet(argv, timeout=10):
    try:
        completed = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                                   timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, "{}: {}".format(argv[0], exc)
    return completed.stdout, None


def _cuda_info():
    """Driver/runtime CUDA versions and GPU name through pycuda, or the reason they are unknown."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        return collections.OrderedDict([("error", "pycuda not importable: {}".format(exc))])
    info = collections.OrderedDict()
    info["pycuda"] = optional_version("pycuda", "VERSION_TEXT")
    info["cuda_compiled"] = ".".join(str(v) for v in cuda.get_version())
    try:
        cuda.init()
        driver = cuda.get_driver_version()
        info["cuda_driver"] = "{}.{}".format(driver // 1000, (driver % 1000) // 10)
        info["gpu_count"] = cuda.Device.count()
        info["gpu_name"] = cuda.Device(0).name() if info["gpu_count"] else None
        if info["gpu_count"]:
            major, minor = cuda.Device(0).compute_capability()
            info["compute_capability"] = "{}.{}".format(major, minor)
    except Exception as exc:  # pycuda raises its own error types; record them, never hide them
        info["error"] = "{}: {}".format(type(exc).__name__, exc)
    return info


def _tensorrt_info():
    try:
        import tensorrt
    except ImportError:
        return None
    from trt.compat import capabilities

    return capabilities(tensorrt)


def environment(probe_cuda=True):
    """JSON-ready description of the machine and software a measurement ran on."""
    env = collections.OrderedDict()
    env["platform"] = platform.platform()
    env["machine"] = platform.machine()
    env["python"] = platform.python_version()
    env["cpu_model"] = cpu_model()
    env["cpu_count"] = os.cpu_count()
    env["device_model"] = device_model()
    env["numpy"] = optional_version("numpy")
    env["cv2"] = optional_version("cv2")
    env["onnxruntime"] = optional_version("onnxruntime")
    env["tensorrt"] = _tensorrt_info()
    env["cuda"] = _cuda_info() if probe_cuda else None

    release = _read("/etc/nv_tegra_release")
    if release is not None:
        try:
            env["jetson"] = parse_nv_tegra_release(release)
        except ValueError as exc:
            env["jetson"] = {"error": str(exc)}
    else:
        env["jetson"] = None

    if shutil.which("nvpmodel"):
        output, error = _run_quiet(["nvpmodel", "-q"])
        if error is None:
            try:
                env["power_mode"] = parse_nvpmodel(output)
            except ValueError as exc:
                env["power_mode"] = {"error": str(exc)}
        else:
            env["power_mode"] = {"error": error}
    else:
        env["power_mode"] = None
    env["jetson_clocks"] = "not checked (reading it needs root); state it in the report if it was run"
    return env
