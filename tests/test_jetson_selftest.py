"""jetson.selftest: the shipped tiny ONNX, its numpy reference, the checklist and its exit codes; jetson/setup.sh run
against fake release files and a fake Python 3.6 (everything but the installs)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from jetson import selftest
from tests.fixtures.make_tiny_selftest_onnx import tiny_selftest_bytes

REPO = Path(__file__).resolve().parent.parent
SETUP = REPO / "jetson" / "setup.sh"
NANO_RELEASE = "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: Sat Feb 19 2022\n"


def test_committed_tiny_model_is_the_generated_one():
    assert Path(selftest.ASSET_PATH).read_bytes() == tiny_selftest_bytes(), (
        "jetson/assets/tiny_selftest.onnx is stale: python tests/fixtures/make_tiny_selftest_onnx.py")


def test_tiny_model_passes_the_tensorrt_82_lint():
    from export.lint import lint_onnx

    report = lint_onnx(selftest.ASSET_PATH)
    assert report.findings == [] and report.opset == 13 and report.ir_version == 7
    ops = [n.op_type for n in __import__("onnx").load(selftest.ASSET_PATH).graph.node]
    assert {"Conv", "Relu", "Add", "Resize", "Concat", "Sigmoid"} <= set(ops)


def test_numpy_reference_matches_onnx_runtime_and_catches_a_changed_weight():
    x = selftest.tiny_input()
    session = ort.InferenceSession(selftest.ASSET_PATH, providers=["CPUExecutionProvider"])
    out = session.run(["probs"], {"x": x})[0]
    reference = selftest.tiny_reference(x)
    assert out.shape == (1, 4, 16, 16) and 0.05 < reference.std()  # not saturated: a real comparison
    assert np.abs(out - reference).max() < 1e-5
    weights = selftest.tiny_weights()
    weights["conv3_w"] = weights["conv3_w"] * 1.05  # a 5% change in one layer fails the FP16 tolerance
    check = selftest._compare("x", out, selftest.tiny_reference(x, weights), selftest.FP16_ATOL, "ORT")
    assert check.failed and "max |diff|" in check.detail


def test_conv2d_against_a_direct_loop():
    rng = np.random.RandomState(0)
    x, w, b = rng.randn(1, 2, 5, 5), rng.randn(3, 2, 3, 3), rng.randn(3)
    got = selftest.conv2d(x, w, b, stride=2, pad=1)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros((1, 3, 3, 3))
    for o in range(3):
        for i in range(3):
            for j in range(3):
                want[0, o, i, j] = (padded[0, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3] * w[o]).sum() + b[o]
    assert np.allclose(got, want, atol=1e-12)


def run_selftest(*args, **env):
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **env)
    full_env.pop("NV_TEGRA_RELEASE", None) if "NV_TEGRA_RELEASE" not in env else None
    return subprocess.run([sys.executable, "-m", "jetson.selftest", *args], cwd=str(REPO), env=full_env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)


def test_selftest_here_passes_with_tensorrt_missing(tmp_path):
    result = run_selftest("--json", str(tmp_path / "st.json"), NV_TEGRA_RELEASE=str(tmp_path / "none"))
    assert result.returncode == 0, result.stdout
    report = json.loads((tmp_path / "st.json").read_text())
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status["ORT inference"] == "OK" and status["tiny model"] == "OK" and status["cv2 video I/O"] == "OK"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert status["tensorrt"] == "MISSING" and status["engine build"] == "SKIP"
        assert "[miss] tensorrt" in result.stdout
    assert "-> exit 0" in result.stdout


def test_selftest_on_a_jetson_requires_tensorrt(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    release = tmp_path / "nv_tegra_release"
    release.write_text(NANO_RELEASE)
    result = run_selftest(NV_TEGRA_RELEASE=str(release))
    assert result.returncode == 1, result.stdout
    assert "L4T 32.7.1 (JetPack 4.6.1), board t210ref" in result.stdout
    assert "[FAIL] tensorrt" in result.stdout and "JetPack" in result.stdout
    assert "[FAIL] cv2 GStreamer" in result.stdout and "pip3 uninstall opencv-python" in result.stdout
    assert "-> exit 1" in result.stdout


def test_selftest_require_trt_and_bad_arguments():
    assert run_selftest("--bogus").returncode == 2
    result = run_selftest("--require-trt")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert result.returncode == 1 and "[FAIL] tensorrt" in result.stdout


# ------------------------------------------------------------------------------------------------- setup.sh

def run_setup(*args, **env):
    return subprocess.run(["bash", str(SETUP), *args], env=dict(os.environ, **env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60)


@pytest.mark.parametrize("script", [SETUP, REPO / "tests" / "device_floor" / "make_envs.sh", REPO / ".ci" / "run",
                                    REPO / "tests" / "lowest_deps" / "run.sh"], ids=lambda path: path.parent.name)
def test_shell_script_syntax_and_shellcheck(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(script)], stdout=subprocess.PIPE, universal_newlines=True)
    assert result.returncode == 0, result.stdout


def test_setup_help_and_bad_option():
    result = run_setup("--help")
    assert result.returncode == 0 and "--max-perf" in result.stdout and "opencv-python" in result.stdout
    result = run_setup("--frobnicate")
    assert result.returncode == 2 and "unknown option '--frobnicate'" in result.stderr


def test_setup_says_not_a_jetson(tmp_path):
    result = run_setup(NV_TEGRA_RELEASE=str(tmp_path / "nv_tegra_release"))
    assert result.returncode == 1
    assert "[FAIL] not a Jetson:" in result.stderr and "nv_tegra_release not found" in result.stderr


def test_setup_refuses_other_l4t_and_other_python(tmp_path):
    release = tmp_path / "rel"
    release.write_text("# R35 (release), REVISION: 4.1, GCID: 1, BOARD: t186ref, EABI: aarch64\n")
    result = run_setup(NV_TEGRA_RELEASE=str(release))
    assert result.returncode == 1 and "L4T R35.4.1 is not JetPack 4.x" in result.stderr
    release.write_text(NANO_RELEASE)
    result = run_setup(NV_TEGRA_RELEASE=str(release), PYTHON=sys.executable)
    assert result.returncode == 1
    assert "[ ok ] Jetson: L4T R32.7.1 (JetPack 4.6.1)" in result.stdout
    assert "TensorRT bindings exist for Python 3.6 only" in result.stderr


@pytest.fixture()
def fake_nano(tmp_path):
    """A Python that says it is 3.6.9 and has tensorrt / cv2 (with GStreamer) modules, a CUDA root with nvcc, and
    nvpmodel on PATH: setup.sh's checks can run end to end without a Jetson."""
    modules = tmp_path / "modules"
    modules.mkdir()
    include = tmp_path / "include"
    include.mkdir()
    (include / "Python.h").write_text("/* fake header: setup.sh only checks that it exists */\n")
    (modules / "sitecustomize.py").write_text(textwrap.dedent(f"""\
        import os, sys, sysconfig
        sys.version_info = (3, 6, 9, 'final', 0)
        _get_paths = sysconfig.get_paths
        def get_paths(*args, **kwargs):
            paths = _get_paths(*args, **kwargs)
            paths["include"] = os.environ.get("FAKE_PY_INCLUDE", {str(include)!r})
            return paths
        sysconfig.get_paths = get_paths
        """))
    (modules / "tensorrt.py").write_text("__version__ = '8.2.1.8'\n")
    (modules / "cv2.py").write_text(textwrap.dedent("""\
        __version__ = '4.1.1'
        def getBuildInformation():
            return '  Video I/O:\\n    GStreamer:                   ' + GST + '\\n'
        GST = 'YES (1.14.5)'
        """))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python3"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={modules} exec {sys.executable} \"$@\"\n")
    nvpmodel = bin_dir / "nvpmodel"
    nvpmodel.write_text("#!/bin/sh\necho 'NV Power Mode: MAXN'\necho 0\n")
    cuda = tmp_path / "cuda" / "bin"
    cuda.mkdir(parents=True)
    nvcc = cuda / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 10.2, V10.2.300'\n")
    for exe in (python, nvpmodel, nvcc):
        exe.chmod(0o755)
    release = tmp_path / "nv_tegra_release"
    release.write_text(NANO_RELEASE)
    env = {"NV_TEGRA_RELEASE": str(release), "PYTHON": str(python), "CUDA_ROOT": str(tmp_path / "cuda"),
           "PATH": f"{bin_dir}:{os.environ['PATH']}", "SUDO": "echo would-run:"}
    return env, modules


def test_setup_on_a_fake_nano_checks_everything(fake_nano):
    env, modules = fake_nano
    result = run_setup("--check-only", "--max-perf", **env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for expected in ("Jetson: L4T R32.7.1 (JetPack 4.6.1)", "Python 3.6.9", "TensorRT 8.2.1.8", "numpy",
                     "OpenCV 4.1.1 with GStreamer", "nvcc: Cuda compilation tools, release 10.2",
                     "would run pip3 install --user 'pycuda<=2022.1'", "would run 'echo would-run: nvpmodel -m 0'",
                     "ready: now run"):
        assert expected in out, out

    result = run_setup("--max-perf", "--skip-pycuda", **env)  # runs the power commands through $SUDO
    assert result.returncode == 0, result.stderr
    assert "would-run: nvpmodel -m 0" in result.stdout and "would-run: jetson_clocks" in result.stdout
    assert "NV Power Mode: MAXN" in result.stdout


def test_setup_refuses_to_build_pycuda_without_python_headers(fake_nano, tmp_path):
    env, _ = fake_nano
    empty = tmp_path / "no-headers"
    empty.mkdir()
    result = run_setup("--check-only", FAKE_PY_INCLUDE=str(empty), **env)
    assert result.returncode == 1
    assert f"Python headers missing ({empty}/Python.h)" in result.stderr and "python3-dev" in result.stderr
    result = run_setup("--check-only", "--skip-pycuda", FAKE_PY_INCLUDE=str(empty), **env)
    assert result.returncode == 0 and "pycuda not installed (--skip-pycuda)" in result.stdout


def test_setup_reads_the_opencv_3_gstreamer_layout(fake_nano):
    env, modules = fake_nano
    cv2_fake = modules / "cv2.py"
    cv2_fake.write_text(cv2_fake.read_text().replace(
        "'  Video I/O:\\n    GStreamer:                   ' + GST + '\\n'",
        "'  Video I/O:\\n    GStreamer:\\n      base:                      ' + GST + '\\n'"))
    assert "base:" in cv2_fake.read_text()
    result = run_setup("--check-only", "--skip-pycuda", **env)
    assert result.returncode == 0, result.stderr
    assert "OpenCV 4.1.1 with GStreamer" in result.stdout


def test_setup_refuses_opencv_without_gstreamer(fake_nano):
    env, modules = fake_nano
    cv2_fake = modules / "cv2.py"
    cv2_fake.write_text(cv2_fake.read_text().replace("'YES (1.14.5)'", "'NO'"))
    result = run_setup("--check-only", **env)
    assert result.returncode == 1
    assert "has no GStreamer, so CSI cameras cannot be opened" in result.stderr
    assert "pip3 uninstall opencv-python" in result.stderr
    assert "pip install" not in result.stdout  # it never installs OpenCV itself
