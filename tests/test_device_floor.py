"""The device side (trt/, runtime/, jetson/) stays within what the Jetson Nano runs: Python 3.6, no torch/onnx.

(a) vermin finds no syntax, stdlib or keyword use newer than Python 3.6 (it is checked to catch a known violation).
(b) every module imports in a fresh interpreter where torch, onnx, tensorrt and pycuda cannot be imported, and
    also with cv2 and onnxruntime blocked (they must be imported lazily, inside functions).
(c) the host side's floor likewise: nothing newer than pyproject.toml's Python 3.10.
The runtime floor (numpy 1.13.3, OpenCV 4.1.1 under a real Python 3.6) is tests/test_device_runtime_floor.py's.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEVICE_PACKAGES = ("trt", "runtime", "jetson")

VERMIN = "import sys; from vermin import main; sys.exit(main())"
VERMIN_ARGS = ["--no-tips", "--violations", "--eval-annotations", "--pessimistic", "--feature", "union-types",
               "--no-config-file", "-q"]


def run_vermin(paths, target="3.6"):
    """vermin's violations of a minimum Python ``target`` in ``paths`` (exit status 0: none)."""
    try:
        import vermin  # noqa: F401
    except ImportError:
        pytest.fail("vermin is not installed: pip install -e '.[dev]' (it checks the device code's Python 3.6 floor)")
    return subprocess.run([sys.executable, "-c", VERMIN, f"-t={target}-"] + VERMIN_ARGS + [str(p) for p in paths],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)


def test_vermin_catches_a_known_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent("""\
        import subprocess
        def f(x):
            if (n := len(x)) > 1:
                return f"{n=}"
            return subprocess.run(["true"], capture_output=True)
        """))
    result = run_vermin([bad])
    assert result.returncode != 0, result.stdout
    for dataclass_import in ("from dataclasses import dataclass\n", "from __future__ import annotations\n"):
        bad.write_text(dataclass_import)
        assert run_vermin([bad]).returncode != 0


def test_device_code_targets_python_36():
    paths = [REPO / name for name in DEVICE_PACKAGES if (REPO / name).is_dir()]
    assert len(paths) == len(DEVICE_PACKAGES), "a device package is missing"
    # The device benchmark scripts run on the Nano too (they import only the device packages).
    scripts = sorted((REPO / "benchmarks").glob("device_*.py"))
    result = run_vermin(paths + scripts)
    assert result.returncode == 0, "device code needs a Python newer than 3.6:\n" + result.stdout
    # vermin really looked at the files (a run over nothing would also exit 0).
    listed = subprocess.run([sys.executable, "-c", VERMIN, "-t=3.6-", "--no-config-file", "-vv"]
                            + [str(p) for p in paths + scripts],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
    for module in ("trt/builder.py", "runtime/runners.py", "jetson/camera_demo.py", "benchmarks/device_prepost.py"):
        assert str(REPO / module) in listed.stdout, module
    assert "Minimum required versions:" in listed.stdout


def test_host_code_targets_python_310(tmp_path):
    """The host side (and the tests) need no Python newer than pyproject.toml's requires-python (3.10)."""
    assert 'requires-python = ">=3.10"' in (REPO / "pyproject.toml").read_text()
    paths = [REPO / name for name in ("compress", "export", "jetson_compress", "benchmarks", "tests")]
    result = run_vermin(paths, "3.10")
    assert result.returncode == 0, "host code needs a Python newer than 3.10:\n" + result.stdout
    bad = tmp_path / "needs_311.py"  # the same check catches a 3.11-only construct (an exception group)
    bad.write_text("try:\n    pass\nexcept* ValueError:\n    pass\n")
    assert run_vermin([bad], "3.10").returncode != 0


IMPORT_ALL = textwrap.dedent("""\
    import importlib, json, os, sys
    BLOCKED = set(sys.argv[2].split(","))

    class Blocker(object):
        # A meta-path finder that refuses the blocked top-level packages, as on a machine without them.
        def find_spec(self, fullname, path=None, target=None):
            if fullname.split(".")[0] in BLOCKED:
                raise ImportError("blocked for this test: " + fullname)
            return None
        find_module = None

    sys.meta_path.insert(0, Blocker())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
    not_blocked = []
    for name in sorted(BLOCKED):  # the blocker itself works: every blocked package really fails to import
        try:
            importlib.import_module(name)
            not_blocked.append(name)
        except ImportError:
            pass
    repo = sys.argv[1]
    sys.path.insert(0, repo)
    modules, failures = [], {}
    for package in sys.argv[3].split(","):
        root = os.path.join(repo, package)
        for folder, _, files in os.walk(root):
            if "__pycache__" in folder:
                continue
            for file in sorted(files):
                if not file.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(folder, file), repo)[:-3].replace(os.sep, ".")
                name = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
                modules.append(name)
                try:
                    importlib.import_module(name)
                except Exception as exc:
                    failures[name] = "{}: {}".format(type(exc).__name__, exc)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"modules": modules, "failures": failures, "loaded_blocked": loaded,
                      "not_blocked": not_blocked}))
    """)


@pytest.mark.parametrize("blocked", [
    ("torch", "onnx", "tensorrt", "pycuda"),
    ("torch", "onnx", "tensorrt", "pycuda", "cv2", "onnxruntime", "torchvision", "onnx_graphsurgeon"),
])
def test_every_device_module_imports_without_heavy_packages(blocked):
    packages = [name for name in DEVICE_PACKAGES if (REPO / name).is_dir()]
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, str(REPO), ",".join(blocked), ",".join(packages)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120, cwd=str(REPO))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "runtime.runners" in report["modules"] and "trt.compat" in report["modules"]
    assert report["failures"] == {}, "device modules that fail to import without {}: {}".format(
        blocked, json.dumps(report["failures"], indent=1))
    assert report["loaded_blocked"] == [] and report["not_blocked"] == []
    assert len(report["modules"]) >= 25  # every module of trt/, runtime/ and jetson/ was imported


def test_missing_package_gives_one_clear_sentence(monkeypatch):
    from runtime.lazy import MissingDependencyError, require

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(MissingDependencyError) as info:
        require("tensorrt", "TensorRTRunner")
    message = str(info.value)
    assert message.startswith("TensorRTRunner needs the Python package 'tensorrt'") and "JetPack" in message
    assert isinstance(info.value, ImportError) and "\n" not in message
