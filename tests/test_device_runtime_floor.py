"""The device code run for real at the Jetson Nano's floor: Python 3.6 with JetPack 4.6's numpy 1.13.3 and OpenCV
4.1.1, and the stand-in backend onnxruntime 1.10.0 (numpy 1.19.5) — the two environments that
``tests/device_floor/make_envs.sh`` creates. ``.ci/run`` creates them wherever a Python 3.6 exists; elsewhere these
tests skip and say how to enable them. test_device_floor.py proves the syntax floor; this module proves the runtime
floor (numpy, OpenCV and onnxruntime APIs and behaviour) on a real bundle of the shipped baseline and real images,
against the host's own results for the same inputs. TensorRT and pycuda are not here: they need a Jetson.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import PEDESTRIANS, REPO
from tests.device_floor import replay_eval
from tests.test_jetson_fixtures import require_video

ENVS = Path(os.environ.get("JETSON_COMPRESS_PY36_ENVS", REPO / ".venv-py36"))
REPLAY = REPO / "tests" / "device_floor" / "replay_eval.py"
# What each environment must hold (make_envs.sh pins them): Python, numpy, OpenCV, onnxruntime.
EXPECTED = {"jetpack": ("3.6", "1.13.3", "4.1.1", None), "ort": ("3.6", "1.19.5", "4.1.1", "1.10.0")}
PER_SOURCE = 8  # test images per source (coco, mot15, pennfudan) in the replayed evaluation
DEVICE_SCRIPTS = ("device_prepost.py", "device_camera_memory.py")
GREY_LEVELS_6 = 6 / 255 / 0.224  # six grey levels of 8-bit input after the ImageNet normalisation (smallest std)


def python36(name: str) -> str:
    path = ENVS / name / "bin" / "python"
    if not path.is_file():
        pytest.skip(f"no Python 3.6 environment at {ENVS / name}: create both with "
                    "'bash tests/device_floor/make_envs.sh' (needs a Python 3.6 interpreter)")
    return str(path)


def run_python(python: str, args, cwd=REPO, timeout=300) -> subprocess.CompletedProcess:
    """``PYTHON ARGS`` importing only what ``cwd`` holds (no repository on the path)."""
    env = dict(os.environ, PYTHONPATH=str(cwd))
    return subprocess.run([python] + [str(a) for a in args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=timeout)


def run36(name: str, args, cwd=REPO, timeout=300) -> subprocess.CompletedProcess:
    """``run_python`` in the Python 3.6 environment ``name``."""
    return run_python(python36(name), args, cwd, timeout)


@pytest.fixture(scope="module")
def floor_bundle(tmp_path_factory) -> Path:
    """The shipped baseline and a 10%-FLOPs channel-pruned variant (no fine-tuning), as a user exports them."""
    from jetson_compress.cli import main
    from tests.nets import torch_threads

    root = tmp_path_factory.mktemp("floor")
    baseline = REPO / "checkpoints" / "baseline_person_320.pt"
    with torch_threads(1):
        assert main(["prune", "--checkpoint", str(baseline), "--data", str(PEDESTRIANS), "--target-flops", "0.1",
                     "--finetune-epochs", "0", "--no-eval", "--out", str(root / "prune")]) == 0
        assert main(["export", "--checkpoint", str(baseline), "--variant", f"pruned={root / 'prune' / 'pruned.pt'}",
                     "--bundle", str(root / "bundle")]) == 0
    return root / "bundle"


@pytest.fixture(scope="module")
def nano(floor_bundle, tmp_path_factory) -> Path:
    """What the README copies to the Nano: trt/, runtime/, jetson/ and the bundle, nothing else of the repository."""
    root = tmp_path_factory.mktemp("nano")
    for package in ("trt", "runtime", "jetson"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(floor_bundle, root / "bundle")
    (root / "benchmarks").mkdir()
    for script in DEVICE_SCRIPTS:  # the device benchmark scripts run on the Nano too
        shutil.copy(REPO / "benchmarks" / script, root / "benchmarks" / script)
    return root


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_environment_holds_the_pinned_floor(name):
    probe = ("import sys, numpy, cv2\n"
             "try:\n    import onnxruntime; ort = onnxruntime.__version__\nexcept ImportError:\n    ort = None\n"
             "print('%d.%d' % sys.version_info[:2], numpy.__version__, cv2.__version__, ort)")
    completed = run36(name, ["-c", probe])
    assert completed.returncode == 0, completed.stdout
    python, numpy_version, cv2_version, ort = completed.stdout.split()
    assert (python, numpy_version, cv2_version, None if ort == "None" else ort) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_selftest_passes(name, nano, tmp_path):
    out = tmp_path / "selftest.json"
    completed = run36(name, ["-m", "jetson.selftest", "--json", out], cwd=nano)
    assert completed.returncode == 0, completed.stdout
    checks = {c["name"]: c["status"] for c in json.loads(out.read_text())["checks"]}
    assert checks["python"] == checks["numpy"] == checks["cv2"] == checks["cv2 video I/O"] == "OK", checks
    if EXPECTED[name][3]:  # onnxruntime: the tiny network matches the numpy reference
        assert checks["ORT inference"] == "OK", checks


class RecordingRunner:
    """Wraps the host's real ONNX Runtime runner and keeps every input and output, in call order."""

    def __init__(self, runner):
        self.runner, self.calls = runner, []

    def infer(self, feed):
        outputs = self.runner.infer(feed)
        self.calls.append((next(iter(feed.values())).copy(), {k: np.array(v) for k, v in outputs.items()}))
        return outputs


def assert_same_numbers(got, expected, tol, where="result"):
    """Nested dicts / lists: the same keys, lengths and strings, numbers within ``tol`` (None for NaN on both)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(expected), (where, sorted(got), sorted(expected))
        for key in expected:
            assert_same_numbers(got[key], expected[key], tol, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), (where, len(got), len(expected))
        for index, (a, b) in enumerate(zip(got, expected)):
            assert_same_numbers(a, b, tol, f"{where}[{index}]")
    elif isinstance(expected, (int, float)) and not isinstance(expected, bool):
        assert got == pytest.approx(expected, abs=tol), where
    else:
        assert got == expected, where


def test_detections_and_ap_at_numpy_1_13_equal_the_host(nano, tmp_path, monkeypatch):
    """Pre-processing with OpenCV 4.1.1, decoding, NMS and VOC AP with numpy 1.13.3 on 24 real test images give the
    host's numbers; the network's outputs are the host's, replayed (no backend installs beside numpy 1.13)."""
    from jetson import benchmark
    from jetson.voc_eval_lite import read_voc_split
    from runtime.bundle import load_bundle, variant_path
    from runtime.runners import OnnxRuntimeRunner

    manifest = load_bundle(nano / "bundle")
    records, ground_truths = read_voc_split(PEDESTRIANS, "test", classes=manifest["classes"])
    chosen = []
    for source in ("coco", "mot15", "pennfudan"):
        chosen += [r for r in records if r.image_id.startswith(source + "_")][:PER_SOURCE]
    truths = OrderedDict((r.image_id, ground_truths[r.image_id]) for r in chosen)
    with OnnxRuntimeRunner(variant_path(nano / "bundle", manifest, "baseline"), threads=1) as ort_runner:
        recorder = RecordingRunner(ort_runner)
        # the same wrapper the device side uses, restored by monkeypatch after the test
        monkeypatch.setattr(benchmark, "detections_from_outputs", benchmark.detections_from_outputs)
        kept = replay_eval.record_detections(benchmark)
        host = benchmark._json_safe(benchmark.evaluate_variant(recorder, chosen, truths, manifest))
    host["detections"], host["summaries"] = kept, replay_eval.timing_summaries()
    assert len(recorder.calls) == len(chosen) == 3 * PER_SOURCE
    arrays = {"ids": np.array([r.image_id for r in chosen])}
    for k, (tensor, outputs) in enumerate(recorder.calls):
        arrays[f"input_{k}"] = tensor
        arrays.update((f"output_{k}_{name}", value) for name, value in outputs.items())
    recording, out = tmp_path / "recording.npz", tmp_path / "device.json"
    np.savez(recording, **arrays)

    completed = run36("jetpack", [REPLAY, "bundle", recording, PEDESTRIANS, out], cwd=nano)
    assert completed.returncode == 0, completed.stdout
    device = json.loads(out.read_text())
    assert device["numpy"] == "1.13.3"
    # OpenCV 4.1.1's bilinear warpAffine rounds sub-pixel positions differently from newer OpenCV: up to 5 grey
    # levels at edges where the letterbox scale is not 1/2 (0.087 after normalisation, measured); what that does to
    # AP on the whole test split is test_benchmark_on_onnxruntime_1_10_matches_the_host's.
    assert device["max_input_diff"] <= GREY_LEVELS_6
    # Every image's detections (boxes to float32 rounding), both interpolations of AP overall and per source, the
    # counts: equal, from the same outputs through the same decoding, NMS and AP code under numpy 1.13.3.
    for key in ("seconds", "max_input_diff", "numpy"):
        device.pop(key), host.pop(key, None)
    assert_same_numbers(device, host, 1e-4)
    assert_same_numbers(device["voc07_11point"], host["voc07_11point"], 1e-12)
    counts = host["per_source"]
    assert [counts[s]["num_images"] for s in ("coco", "mot15", "pennfudan")] == [PER_SOURCE] * 3
    assert sum(len(scores) for _, scores, _ in kept) == host["voc07_11point"]["num_detections"]["person"]
    assert min(len(scores) for _, scores, _ in kept) > 10  # NMS had real work on every image
    assert host["voc07_11point"]["ap"]["person"] > 0.5  # the shipped detector, not noise


def _benchmark(run, out):
    completed = run(["-m", "jetson.benchmark", "bundle", "--backend", "ort", "--runs", "4", "--warmup", "1",
                     "--round-size", "2", "--pipeline-runs", "3", "--threads", "2", "--no-tegrastats",
                     "--eval", PEDESTRIANS, "--json", out, "--md", out.with_suffix(".md")])
    assert completed.returncode == 0, completed.stdout
    return json.loads(out.read_text())


def test_benchmark_on_onnxruntime_1_10_matches_the_host(nano, tmp_path):
    """`python3 -m jetson.benchmark --eval` end to end on Python 3.6 / onnxruntime 1.10 / numpy 1.19 / OpenCV 4.1.1:
    both variants load, are timed side by side and score the host's AP50 on the whole test split (233 images) to
    within half a point, overall and per source. Measured: the shipped baseline 0.6032 against 0.6037 (COCO 0.2550
    against 0.2555, MOT15 and Penn-Fudan equal), the unfine-tuned pruned variant 0.5194 against 0.5219 (Penn-Fudan
    all-point 0.8395 against 0.8440): OpenCV 4.1.1's resampling (above), the only input that differs."""
    device = _benchmark(lambda args: run36("ort", args, cwd=nano), tmp_path / "device.json")
    host = _benchmark(lambda args: run_python(sys.executable, args, cwd=nano), tmp_path / "host.json")
    assert device["environment"]["python"].startswith("3.6.")
    manifest = json.loads((nano / "bundle" / "manifest.json").read_text())
    assert list(device["variants"]) == ["baseline", "pruned"]
    for name, row in device["variants"].items():
        assert row["latency_ms"]["count"] == 4 and row["pipeline"]["runs"] == 3
        assert row["flops"] == manifest["variants"][name]["flops"]
        accuracy, other = row["accuracy"], host["variants"][name]["accuracy"]
        assert accuracy["num_images"] == other["num_images"] == 233
        for metric in ("voc07_11point", "all_point"):
            assert accuracy[metric]["ap"]["person"] == pytest.approx(other[metric]["ap"]["person"], abs=5e-3)
            for source in ("coco", "mot15", "pennfudan"):
                assert accuracy["per_source"][source][metric]["ap"]["person"] == pytest.approx(
                    other["per_source"][source][metric]["ap"]["person"], abs=5e-3)
    assert device["variants"]["baseline"]["ap50"] > 0.59 and device["variants"]["pruned"]["ap50"] > 0.5


def test_camera_demo_writes_the_annotated_video(nano, tmp_path):
    """The demo on the real street video (354 frames), headless and looping past its end, with OpenCV 4.1.1's decoder
    and writer: 360 annotated frames, one loop."""
    import cv2

    video, out = require_video(), tmp_path / "demo.mp4"
    completed = run36("ort", ["-m", "jetson.camera_demo", "--bundle", "bundle", "--backend", "ort", "--threads", "2",
                              "--source", video, "--loop", "--headless", "--out", out, "--max-frames", 360], cwd=nano)
    assert completed.returncode == 0, completed.stdout
    assert "source: 0 reconnects, 1 loops" in completed.stdout, completed.stdout
    capture = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame.shape)
    capture.release()
    assert frames == [(480, 640, 3)] * 360


def test_device_benchmark_scripts_run(nano, tmp_path):
    """benchmarks/device_prepost.py and device_camera_memory.py (the latter runs the camera demo in a child) on the
    real video, on Python 3.6 / onnxruntime 1.10 / OpenCV 4.1.1."""
    video = require_video()
    prepost, memory = tmp_path / "prepost.json", tmp_path / "memory.json"
    completed = run36("ort", ["benchmarks/device_prepost.py", "bundle", "--video", video, "--frames", 6,
                              "--json", prepost, "--md", tmp_path / "prepost.md"], cwd=nano)
    assert completed.returncode == 0, completed.stdout
    report = json.loads(prepost.read_text())
    assert list(report["variants"]) == ["baseline", "pruned"] and report["environment"]["python"].startswith("3.6.")
    completed = run36("ort", ["benchmarks/device_camera_memory.py", "bundle", "--video", video, "--frames", 40,
                              "--every", 10, "--settle", 10, "--json", memory, "--png", tmp_path / "memory.png",
                              "--out-video", tmp_path / "loop.mp4"], cwd=nano)
    assert completed.returncode == 0, completed.stdout
    report = json.loads(memory.read_text())
    assert report["frames"] == 40 and report["verdict"]["samples_after_settle"] >= 3
