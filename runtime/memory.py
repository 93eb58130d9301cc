"""Memory figures for device reports: process RSS, CUDA free memory, tegrastats RAM on a Jetson.

Device module: Python 3.6 syntax, standard library at module level; pycuda imported lazily; never imports torch or
onnx. On the Nano CPU and GPU share 4 GB: ``cudaMemGetInfo`` reports system RAM, and the CUDA context with
cuDNN/cuBLAS takes far more than an engine. Report every figure with its source; never add them up blindly.
"""

import collections
import os
import re
import select
import shutil
import subprocess
import sys
import time

from runtime.lazy import require

__all__ = [
    "parse_proc_status", "current_rss_mib", "peak_rss_mib", "process_memory", "cuda_memory_info", "parse_tegrastats",
    "tegrastats_sample", "memory_report",
]

MIB = 1024.0 * 1024.0


def parse_proc_status(text):
    """``/proc/<pid>/status`` text -> {field: kB} for the ``kB`` fields (VmRSS, VmHWM, VmSize, ...)."""
    values = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+):\s+(\d+)\s+kB\s*$", line)
        if match:
            values[match.group(1)] = int(match.group(2))
    return values


def current_rss_mib(status_path="/proc/self/status"):
    """Resident set size now (VmRSS), in MiB; None where /proc is absent (not Linux)."""
    try:
        with open(status_path) as handle:
            fields = parse_proc_status(handle.read())
    except IOError:
        return None
    return fields["VmRSS"] / 1024.0 if "VmRSS" in fields else None


def peak_rss_mib():
    """Peak resident set size of this process (``ru_maxrss``: kB on Linux, bytes on macOS), in MiB."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024.0


def process_memory():
    return collections.OrderedDict([
        ("rss_mib", current_rss_mib()),
        ("peak_rss_mib", peak_rss_mib()),
        ("source", "/proc/self/status VmRSS; getrusage ru_maxrss"),
    ])


def cuda_memory_info():
    """(free, total) bytes of the current CUDA context's device (pycuda ``mem_get_info``); needs an active context,
    e.g. inside an active `runtime.runners.TensorRTRunner`."""
    cuda = require("pycuda.driver", "cuda_memory_info")
    free, total = cuda.mem_get_info()
    return collections.OrderedDict([("free_bytes", int(free)), ("total_bytes", int(total))])


_TEGRA_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_TEGRA_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_TEGRA_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%")
_TEGRA_EMC = re.compile(r"\bEMC_FREQ (\d+)%")


def parse_tegrastats(line):
    """One tegrastats line -> RAM/SWAP used and total (MiB), GPU (GR3D) and memory-controller (EMC) load (%)."""
    result = collections.OrderedDict()
    ram = _TEGRA_RAM.search(line)
    if ram is None:
        raise ValueError("not a tegrastats line (no 'RAM used/totalMB'): {!r}".format(line[:120]))
    result["ram_used_mib"] = int(ram.group(1))
    result["ram_total_mib"] = int(ram.group(2))
    swap = _TEGRA_SWAP.search(line)
    if swap is not None:
        result["swap_used_mib"] = int(swap.group(1))
        result["swap_total_mib"] = int(swap.group(2))
    for key, pattern in (("gr3d_percent", _TEGRA_GR3D), ("emc_percent", _TEGRA_EMC)):
        match = pattern.search(line)
        if match is not None:
            result[key] = int(match.group(1))
    return result


def tegrastats_sample(timeout=5.0, interval_ms=100):
    """One parsed tegrastats sample, or None where ``tegrastats`` does not exist (not a Jetson)."""
    executable = shutil.which("tegrastats")
    if executable is None:
        return None
    process = subprocess.Popen([executable, "--interval", str(int(interval_ms))], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, universal_newlines=True)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.time()))
            if not ready:
                break
            line = process.stdout.readline()
            if not line:
                break
            if "RAM " in line:
                sample = parse_tegrastats(line)
                sample["source"] = "tegrastats"
                return sample
        raise RuntimeError("tegrastats printed no RAM line within {} s".format(timeout))
    finally:
        process.terminate()
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def memory_report(runner=None, tegrastats=True):
    """Process memory, the runner's backend figures (engine size, device memory, load delta) and tegrastats."""
    report = collections.OrderedDict([("process", process_memory())])
    if runner is not None:
        report["backend"] = runner.memory_info()
    if tegrastats:
        report["tegrastats"] = tegrastats_sample()
    report["pid"] = os.getpid()
    return report
