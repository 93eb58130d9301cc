"""Device runtime on the host: pre-processing parity with training, ONNX Runtime end to end, measurement.

The end-to-end test runs the device path (runtime.preprocess -> OnnxRuntimeRunner -> runtime.postprocess) on real
pedestrian images with a tiny generated detector, and compares it with the host path (compress.augment letterbox
and to_tensor_layout -> numpy twin of the graph -> compress.nms (torch) -> compress.inference.unletterbox).
"""

import hashlib
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from compress import augment
from compress import nms as host_nms
from compress.inference import unletterbox as host_unletterbox
from runtime import environment as env_mod
from runtime import memory
from runtime.bundle import load_bundle
from runtime.measure import measure, pipeline_fps, summarize_ms
from runtime.postprocess import Detections, PostprocessConfig, detections_from_outputs
from runtime.preprocess import (
    LetterboxMeta, ManifestError, PreprocessConfig, letterbox, letterbox_boxes, normalise, preprocess,
    unletterbox_boxes,
)
from runtime.runners import OnnxRuntimeRunner, Runner, check_feed, TensorSpec

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "make_tiny_onnx.py"
_spec = importlib.util.spec_from_file_location("make_tiny_onnx", FIXTURE)
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

SIZE = 320
N_ANCHORS = 2100


def make_manifest(onnx_name="tiny.onnx", size=SIZE, **overrides):
    manifest = {
        "format": "jetson-compress-bundle", "format_version": 1, "created": "2026-01-01T00:00:00Z",
        "code_version": "test", "classes": ["person"],
        "input": {"name": "images", "shape": [1, 3, size, size], "layout": "NCHW", "dtype": "float32",
                  "colour_order": "RGB", "pixel_scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406],
                  "std": [0.229, 0.224, 0.225], "letterbox": {"pad_value": 114, "align": "center"}},
        "outputs": {"boxes": {"name": "boxes", "shape": [1, N_ANCHORS, 4], "format": "xyxy", "units": "input_pixels"},
                    "scores": {"name": "scores", "shape": [1, N_ANCHORS, 1], "activation": "sigmoid"}},
        "decoding": {"in_graph": True, "strides": [8, 16, 32]},
        "nms": {"score_threshold": 0.3, "iou_threshold": 0.6, "max_detections": 100, "pre_nms_topk": 1000,
                "class_wise": True},
        "variants": {"baseline": {"file": onnx_name, "sha256": "0" * 64, "flops": 2, "macs": 1, "params": 1,
                                  "opset": 13, "bytes": 1}},
    }
    for dotted, value in overrides.items():
        node = manifest
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return manifest


@pytest.fixture(scope="module")
def real_images(pedestrians):
    folder = pedestrians / "VOC2007" / "JPEGImages"
    files = sorted(folder.glob("*.jpg"))
    picks = [files[0], files[len(files) // 3], files[2 * len(files) // 3], files[-1]]
    images = [cv2.imread(str(p)) for p in picks]
    assert all(img is not None for img in images)
    return images


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import onnx

    folder = tmp_path_factory.mktemp("bundle")
    model, weights = tiny.make_tiny_detector(SIZE)
    path = folder / "tiny.onnx"
    onnx.save(model, str(path))
    manifest = make_manifest()
    data = path.read_bytes()
    manifest["variants"]["baseline"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return path, weights


# --- pre-processing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [320, 416])
def test_letterbox_is_identical_to_training_letterbox_on_real_images(real_images, size):
    for image in real_images:
        # Shrinking (INTER_AREA) on the originals, enlarging (INTER_LINEAR) on a reduced copy.
        small = cv2.resize(image, (image.shape[1] // 3, image.shape[0] // 3), interpolation=cv2.INTER_AREA)
        for img in (image, small):
            ours, meta = letterbox(img, size, 114)
            theirs, (scale, dx, dy) = augment.letterbox(img, size, 114)
            assert ours.shape == theirs.shape == (size, size, 3)
            assert np.array_equal(ours, theirs), "letterbox differs from compress/augment.py"
            assert (meta.scale, meta.dx, meta.dy) == (scale, dx, dy)
            assert (meta.width, meta.height) == (img.shape[1], img.shape[0])


def test_normalise_matches_host_layout_to_one_ulp(real_images):
    config = PreprocessConfig.from_manifest(make_manifest())
    boxed, _ = letterbox(real_images[1], SIZE, 114)
    ours = normalise(boxed, config)
    host = augment.to_tensor_layout(boxed, augment.IMAGENET_MEAN, augment.IMAGENET_STD)[None]
    assert ours.shape == (1, 3, SIZE, SIZE) and ours.dtype == np.float32 and ours.flags["C_CONTIGUOUS"]
    # x * (1/255) against x / 255 in float32: at most a few ulp after the mean/std step.
    assert np.max(np.abs(ours - host)) <= 2e-6
    # Channel 0 is red: the pad pixels (114, 114, 114) map to (114/255 - mean) / std per channel.
    pad = (114 / 255.0 - np.array(augment.IMAGENET_MEAN)) / np.array(augment.IMAGENET_STD)
    assert np.allclose(ours[0, :, 0, 0], pad, atol=1e-6) or np.allclose(ours[0, :, -1, -1], pad, atol=1e-6)


def test_lookup_table_normalise_is_bit_identical_to_the_formula(real_images):
    from runtime.preprocess import _normalise_cv2, _normalise_numpy, normalise_reference

    boxed, _ = letterbox(real_images[2], SIZE, 114)
    every_value = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3) % 256  # all 256 values in every channel
    for order in ("RGB", "BGR"):
        config = PreprocessConfig(SIZE, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), colour_order=order)
        for image in (boxed, every_value.astype(np.uint8)):
            slow = normalise_reference(image, config)
            for fast in (normalise(image, config), _normalise_numpy(image, config), _normalise_cv2(image, config, cv2)):
                assert fast.shape == slow.shape and fast.dtype == slow.dtype == np.float32
                assert fast.flags["C_CONTIGUOUS"] and np.array_equal(fast, slow)
    # RGB: network channel 0 reads the frame's red channel (BGR index 2).
    image = np.zeros((2, 2, 3), np.uint8)
    image[..., 2] = 255
    out = normalise(image, PreprocessConfig(2, mean=(0, 0, 0), std=(1, 1, 1), colour_order="RGB"))
    assert out[0, :, 0, 0].tolist() == [1.0, 0.0, 0.0]


def test_unletterbox_is_bit_identical_to_host_and_exact_on_dyadic_scales():
    rng = np.random.default_rng(3)
    for width, height in ((640, 480), (294, 331), (100, 60)):
        scale, dx, dy = augment.letterbox_params(width, height, SIZE)
        meta = LetterboxMeta(scale, dx, dy, width, height)
        boxes = rng.uniform(-20, SIZE + 20, size=(50, 4))
        assert np.array_equal(unletterbox_boxes(boxes, meta), host_unletterbox(boxes, scale, dx, dy, width, height))
    # 640x400 -> scale 0.5, dx 0, dy 60: every step is exact in binary floating point.
    meta = LetterboxMeta(*augment.letterbox_params(640, 400, SIZE), width=640, height=400)
    assert (meta.scale, meta.dx, meta.dy) == (0.5, 0.0, 60.0)
    original = np.array([[0.0, 0.0, 640.0, 400.0], [10.25, 20.5, 300.75, 399.0]])
    boxed = letterbox_boxes(original, meta)
    assert np.array_equal(boxed, [[0.0, 60.0, 320.0, 260.0], [5.125, 70.25, 150.375, 259.5]])
    assert np.array_equal(unletterbox_boxes(boxed, meta), original)
    # Clipping to the image, and no clipping on request.
    outside = np.array([[-10.0, 50.0, 330.0, 270.0]])
    assert np.array_equal(unletterbox_boxes(outside, meta), [[0.0, 0.0, 640.0, 400.0]])
    assert np.array_equal(unletterbox_boxes(outside, meta, clip=False), [[-20.0, -20.0, 660.0, 420.0]])


def test_manifest_errors_name_the_field():
    manifest = make_manifest()
    del manifest["input"]["letterbox"]["pad_value"]
    with pytest.raises(ManifestError, match="input.letterbox.pad_value"):
        PreprocessConfig.from_manifest(manifest)
    with pytest.raises(ManifestError, match="format_version 2"):
        PreprocessConfig.from_manifest(make_manifest(format_version=2))
    with pytest.raises(ManifestError, match=r"\[1, 3, S, S\]"):
        PreprocessConfig.from_manifest(make_manifest(input__shape=[1, 3, 320, 256]))
    with pytest.raises(ValueError, match="BGR uint8"):
        preprocess(np.zeros((10, 10), np.uint8), PreprocessConfig(SIZE))


def test_in_graph_false_is_not_implemented():
    with pytest.raises(NotImplementedError, match="in_graph is false"):
        PostprocessConfig.from_manifest(make_manifest(decoding__in_graph=False))


# --- ONNX Runtime end to end ------------------------------------------------------------------------------------


def host_detections(image, weights, manifest):
    """The host path: training letterbox + layout, numpy twin of the graph, torch NMS, host unletterbox."""
    boxed, (scale, dx, dy) = augment.letterbox(image, SIZE, 114)
    x = augment.to_tensor_layout(boxed, augment.IMAGENET_MEAN, augment.IMAGENET_STD)[None]
    boxes, scores = tiny.reference_forward(x, weights, SIZE)
    nms_cfg = manifest["nms"]
    b, s, labels = host_nms.postprocess(
        torch.from_numpy(boxes[0].astype(np.float32)), torch.from_numpy(scores[0].astype(np.float32)),
        nms_cfg["score_threshold"], nms_cfg["iou_threshold"], nms_cfg["max_detections"], nms_cfg["pre_nms_topk"])
    height, width = image.shape[:2]
    return x, (boxes, scores), Detections(host_unletterbox(b.numpy(), scale, dx, dy, width, height), s.numpy(),
                                          labels.numpy())


def test_onnxruntime_pipeline_matches_host_reference(tiny_model, real_images):
    path, weights = tiny_model
    manifest = load_bundle(path.parent, check_onnx=True)  # the bundle module accepts this bundle
    pre = PreprocessConfig.from_manifest(manifest)
    post = PostprocessConfig.from_manifest(manifest)
    with OnnxRuntimeRunner(path, threads=1) as runner:
        specs = runner.input_specs()
        assert list(specs) == ["images"]
        assert specs["images"] == TensorSpec("images", (1, 3, SIZE, SIZE), np.dtype(np.float32))
        assert list(runner.output_specs()) == ["boxes", "scores"]
        assert runner.last_gpu_ms is None
        counts = []
        for image in real_images:
            x, meta = preprocess(image, pre)
            outputs = runner.infer({"images": x})
            host_x, (ref_boxes, ref_scores), expected = host_detections(image, weights, manifest)
            assert np.max(np.abs(x - host_x)) <= 2e-6
            assert outputs["boxes"].shape == (1, N_ANCHORS, 4) and outputs["scores"].shape == (1, N_ANCHORS, 1)
            np.testing.assert_allclose(outputs["boxes"], ref_boxes, rtol=0, atol=1e-3)
            np.testing.assert_allclose(outputs["scores"], ref_scores, rtol=0, atol=1e-5)
            got = detections_from_outputs(outputs, post, meta)
            assert len(got.scores) == len(expected.scores)
            np.testing.assert_allclose(got.boxes, expected.boxes, rtol=0, atol=1e-2)
            np.testing.assert_allclose(got.scores, expected.scores, rtol=0, atol=1e-5)
            assert np.array_equal(got.labels, expected.labels)
            assert np.all(got.scores > 0.3) and np.all(np.diff(got.scores) <= 0)
            assert np.all(got.boxes[:, [0, 2]] <= image.shape[1]) and np.all(got.boxes[:, [1, 3]] <= image.shape[0])
            counts.append(len(got.scores))
    assert all(0 < c < 100 for c in counts), counts  # the fixture exercises thresholding and NMS
    assert not runner.is_active


def test_runner_refuses_bad_feeds(tiny_model):
    path, _ = tiny_model
    runner = OnnxRuntimeRunner(path)
    with pytest.raises(RuntimeError, match="needs an active runner"):
        runner.infer({"images": np.zeros((1, 3, SIZE, SIZE), np.float32)})
    with runner:
        with pytest.raises(ValueError, match="dtype float32"):
            runner.infer({"images": np.zeros((1, 3, SIZE, SIZE), np.float64)})
        with pytest.raises(ValueError, match="shape"):
            runner.infer({"images": np.zeros((1, 3, SIZE, 256), np.float32)})
        with pytest.raises(ValueError, match=r"missing \['images'\], unexpected \['input'\]"):
            runner.infer({"input": np.zeros((1, 3, SIZE, SIZE), np.float32)})
        with pytest.raises(RuntimeError, match="already active"):
            runner.activate()
    # A dynamic dimension (None) accepts any size.
    check_feed({"x": np.zeros((4, 3), np.float32)}, {"x": TensorSpec("x", (None, 3), np.dtype(np.float32))})


# --- measurement ------------------------------------------------------------------------------------------------


def test_summarize_ms_hand_computed():
    stats = summarize_ms(np.arange(1, 101, dtype=np.float64))
    assert stats["count"] == 100
    assert stats["mean"] == 50.5 and stats["median"] == 50.5
    assert stats["p90"] == pytest.approx(90.1) and stats["p99"] == pytest.approx(99.01)
    assert stats["min"] == 1.0 and stats["max"] == 100.0
    assert stats["std"] == pytest.approx(np.sqrt((100 ** 2 - 1) / 12.0))
    with pytest.raises(ValueError):
        summarize_ms([])


class FakeGpuRunner(Runner):
    """Reports a known GPU time per run, to check that GPU stats are taken from the runner and kept apart."""

    name = "FakeGpuRunner"

    def __init__(self, gpu_times):
        Runner.__init__(self)
        self._gpu_times = list(gpu_times)
        self.calls = 0

    def _activate(self):
        self._inputs["x"] = TensorSpec("x", (1,), np.dtype(np.float32))

    def _deactivate(self):
        pass

    def _infer(self, feed):
        self.last_gpu_ms = self._gpu_times[self.calls % len(self._gpu_times)]
        self.calls += 1
        return {"y": feed["x"] * 2}


def test_measure_orders_stats_and_counts_runs(tiny_model):
    path, _ = tiny_model
    with OnnxRuntimeRunner(path, threads=1) as runner:
        result = measure(runner, {"images": np.zeros((1, 3, SIZE, SIZE), np.float32)}, warmup=2, runs=25)
    e2e = result["end_to_end_ms"]
    assert result["runs"] == 25 and result["warmup"] == 2 and e2e["count"] == 25
    assert 0 < e2e["min"] <= e2e["median"] <= e2e["p90"] <= e2e["p99"] <= e2e["max"]
    assert e2e["min"] <= e2e["mean"] <= e2e["max"] and e2e["std"] >= 0
    assert result["gpu_ms"] is None

    with FakeGpuRunner([1.0, 2.0, 3.0, 4.0]) as fake:
        result = measure(fake, {"x": np.ones(1, np.float32)}, warmup=3, runs=8)
    assert fake.calls == 11
    # Timed runs 4..11 cycle through 4.0, 1.0, 2.0, 3.0 twice.
    assert result["gpu_ms"]["count"] == 8 and result["gpu_ms"]["mean"] == 2.5
    assert result["gpu_ms"]["min"] == 1.0 and result["gpu_ms"]["max"] == 4.0
    assert result["end_to_end_ms"]["count"] == 8
    with pytest.raises(ValueError):
        measure(fake, {"x": np.ones(1, np.float32)}, warmup=0, runs=0)


def test_pipeline_fps_on_real_frames(tiny_model, real_images):
    path, _ = tiny_model
    manifest = make_manifest()
    with OnnxRuntimeRunner(path, threads=1) as runner:
        result = pipeline_fps(runner, real_images, PreprocessConfig.from_manifest(manifest),
                              PostprocessConfig.from_manifest(manifest), warmup=1, runs=6)
    assert result["runs"] == 6 and result["frames"] == len(real_images)
    for stage in ("preprocess_ms", "infer_ms", "postprocess_ms", "total_ms"):
        assert result[stage]["count"] == 6 and result[stage]["min"] > 0
    assert result["fps"] == pytest.approx(1000.0 / result["total_ms"]["mean"])
    assert result["detections_per_frame"] > 0


# --- memory and environment -------------------------------------------------------------------------------------

TEGRASTATS_NANO = ("RAM 2037/3964MB (lfb 25x4MB) SWAP 12/1982MB (cached 0MB) CPU [12%@1479,4%@1479,3%@1479,"
                   "2%@1479] EMC_FREQ 7% GR3D_FREQ 45% PLL@27C CPU@29.5C PMIC@50C GPU@27.5C AO@36C "
                   "thermal@28.25C POM_5V_IN 2894/2894 POM_5V_GPU 448/448 POM_5V_CPU 648/648")


def test_memory_figures_and_parsers():
    figures = memory.process_memory()
    assert figures["rss_mib"] > 10 and figures["peak_rss_mib"] >= figures["rss_mib"] * 0.5
    assert memory.parse_proc_status("Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t   1024 kB\n") == {
        "VmHWM": 2048, "VmRSS": 1024}
    sample = memory.parse_tegrastats(TEGRASTATS_NANO)
    assert dict(sample) == {"ram_used_mib": 2037, "ram_total_mib": 3964, "swap_used_mib": 12,
                            "swap_total_mib": 1982, "gr3d_percent": 45, "emc_percent": 7}
    with pytest.raises(ValueError):
        memory.parse_tegrastats("nothing here")
    assert memory.tegrastats_sample() is None  # no tegrastats on this machine


def test_environment_parsers_and_report():
    release = ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, "
               "DATE: Sat Feb 19 17:05:08 UTC 2022")
    assert dict(env_mod.parse_nv_tegra_release(release)) == {"l4t": "32.7.1", "board": "t210ref", "jetpack": "4.6.1"}
    assert dict(env_mod.parse_nvpmodel("NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n0\n")) == {
        "power_mode": "MAXN", "power_mode_id": 0}
    assert dict(env_mod.parse_nvpmodel("NV Power Mode: 5W\n1\n")) == {"power_mode": "5W", "power_mode_id": 1}
    nano_cpuinfo = "processor\t: 0\nBogoMIPS\t: 38.40\nCPU implementer\t: 0x41\nCPU part\t: 0xd07\n"
    assert env_mod.cpu_model(nano_cpuinfo) == "ARM Cortex-A57"
    env = env_mod.environment(probe_cuda=False)
    assert env["python"].count(".") == 2 and env["numpy"] == np.__version__ and env["cv2"] == cv2.__version__
    assert env["jetson"] is None and env["power_mode"] is None  # not a Jetson
    json.dumps(env)


# --- NMS ----------------------------------------------------------------------------------------------------------


def _greedy_reference(boxes, scores, labels, threshold, limit):
    """Textbook greedy NMS, one box at a time (float64, stable order)."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    for i in order:
        ok = True
        for j in keep:
            if labels[i] != labels[j]:
                continue
            w = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            h = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            inter = max(w, 0.0) * max(h, 0.0)
            union = ((boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
                     + (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1]) - inter)
            if union > 0 and inter / union > threshold:
                ok = False
                break
        if ok:
            keep.append(int(i))
            if limit is not None and len(keep) >= limit:
                break
    return keep


@pytest.mark.parametrize("seed", range(4))
def test_blocked_nms_equals_textbook_greedy_over_many_blocks(seed):
    from runtime import nms

    rng = np.random.default_rng(seed)
    n = int(rng.integers(150, 400))
    # Clusters around a few objects (heavy suppression) plus scattered boxes (light suppression), 3 classes.
    centres = rng.uniform(20, 300, size=(8, 2))
    pick = rng.integers(0, 8, size=n)
    centre = np.where(rng.uniform(size=(n, 1)) < 0.7, centres[pick] + rng.normal(0, 4, size=(n, 2)),
                      rng.uniform(0, 320, size=(n, 2)))
    size = rng.uniform(8, 60, size=(n, 2))
    boxes = np.hstack([centre - size / 2, centre + size / 2])
    scores = np.round(rng.uniform(0, 1, size=n), 2)  # ties on purpose
    labels = rng.integers(0, 3, size=n)
    for threshold in (0.3, 0.6):
        for limit in (None, 1, 64, 65, 100):
            got = nms.batched_nms(boxes, scores, labels, threshold, limit).tolist()
            assert got == _greedy_reference(boxes, scores, labels, threshold, limit), (threshold, limit)
        assert nms.nms(boxes, scores, threshold).tolist() == _greedy_reference(
            boxes, scores, np.zeros(n, np.int64), threshold, None)
