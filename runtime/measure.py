"""Latency measurement of a runner: warm-up, repeated runs, spread; GPU time kept apart from end-to-end time.

Device module: Python 3.6 syntax, numpy only at module level; never imports torch or onnx.

- ``end_to_end_ms``: wall time of ``runner.infer(feed)`` (host -> device copies, execution, device -> host copies,
  Python overhead), by ``time.perf_counter``.
- ``gpu_ms``: the runner's own GPU time of the same runs (CUDA events around the execution), when it reports one.
- `pipeline_fps`: letterbox + normalise, infer, NMS + unletterbox on real frames (image decoding excluded), per stage.

Memory and environment figures live in `runtime.memory` and `runtime.environment`, re-exported here.
"""

import collections
import time

import numpy as np

from runtime.environment import environment
from runtime.memory import cuda_memory_info, memory_report, process_memory, tegrastats_sample
from runtime.postprocess import detections_from_outputs
from runtime.preprocess import preprocess

__all__ = [
    "summarize_ms", "measure", "pipeline_fps", "environment", "memory_report", "process_memory",
    "cuda_memory_info", "tegrastats_sample",
]


def summarize_ms(samples):
    """count, mean, median, p90, p99, std, min, max of millisecond samples (percentiles: linear interpolation)."""
    values = np.asarray(samples, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("no samples to summarise")
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return collections.OrderedDict([
        ("count", int(values.size)),
        ("mean", float(values.mean())),
        ("median", float(p50)),
        ("p90", float(p90)),
        ("p99", float(p99)),
        ("std", float(values.std())),
        ("min", float(values.min())),
        ("max", float(values.max())),
    ])


def _check_counts(warmup, runs):
    if int(warmup) < 0 or int(runs) < 1:
        raise ValueError("need warmup >= 0 and runs >= 1; got warmup={} runs={}".format(warmup, runs))


def measure(runner, feed, warmup=20, runs=200):
    """Latency of ``runner.infer(feed)`` on an active runner: ``warmup`` untimed runs, then ``runs`` timed ones."""
    _check_counts(warmup, runs)
    for _ in range(int(warmup)):
        runner.infer(feed)
    end_to_end = []
    gpu = []
    for _ in range(int(runs)):
        start = time.perf_counter()
        runner.infer(feed)
        end_to_end.append((time.perf_counter() - start) * 1000.0)
        gpu_ms = getattr(runner, "last_gpu_ms", None)
        if gpu_ms is not None:
            gpu.append(gpu_ms)
    if gpu and len(gpu) != len(end_to_end):
        raise RuntimeError("{} reported GPU time for {} of {} runs; refusing to mix them".format(
            getattr(runner, "name", "runner"), len(gpu), len(end_to_end)))
    return collections.OrderedDict([
        ("runner", getattr(runner, "name", type(runner).__name__)),
        ("warmup", int(warmup)),
        ("runs", int(runs)),
        ("end_to_end_ms", summarize_ms(end_to_end)),
        ("gpu_ms", summarize_ms(gpu) if gpu else None),
        ("what", "end_to_end_ms: wall time of infer() incl. host<->device copies; gpu_ms: CUDA events around the "
                 "execution alone (None when the backend has no GPU timer)"),
    ])


def pipeline_fps(runner, frames, preprocess_config, postprocess_config, warmup=5, runs=None):
    """Per-stage latency and frames per second of the whole detector pipeline on decoded BGR frames.

    Args:
        runner: an active runner.
        frames: list of BGR uint8 images (already decoded: decoding/capture is not included).
        preprocess_config: `runtime.preprocess.PreprocessConfig`.
        postprocess_config: `runtime.postprocess.PostprocessConfig`.
        warmup: untimed frames first.
        runs: timed frames (cycling through ``frames``); default ``len(frames)``.
    """
    frames = list(frames)
    if not frames:
        raise ValueError("pipeline_fps needs at least one frame")
    runs = len(frames) if runs is None else int(runs)
    _check_counts(warmup, runs)
    input_name = preprocess_config.input_name

    def one(frame):
        t0 = time.perf_counter()
        tensor, meta = preprocess(frame, preprocess_config)
        t1 = time.perf_counter()
        outputs = runner.infer({input_name: tensor})
        t2 = time.perf_counter()
        detections = detections_from_outputs(outputs, postprocess_config, meta)
        t3 = time.perf_counter()
        return (t1 - t0) * 1000.0, (t2 - t1) * 1000.0, (t3 - t2) * 1000.0, detections

    for index in range(int(warmup)):
        one(frames[index % len(frames)])
    stages = {"preprocess": [], "infer": [], "postprocess": [], "total": []}
    detections_count = 0
    for index in range(runs):
        pre, inf, post, detections = one(frames[index % len(frames)])
        stages["preprocess"].append(pre)
        stages["infer"].append(inf)
        stages["postprocess"].append(post)
        stages["total"].append(pre + inf + post)
        detections_count += len(detections.scores)
    total = summarize_ms(stages["total"])
    return collections.OrderedDict([
        ("runner", getattr(runner, "name", type(runner).__name__)),
        ("frames", len(frames)),
        ("warmup", int(warmup)),
        ("runs", runs),
        ("fps", 1000.0 / total["mean"] if total["mean"] > 0 else None),
        ("preprocess_ms", summarize_ms(stages["preprocess"])),
        ("infer_ms", summarize_ms(stages["infer"])),
        ("postprocess_ms", summarize_ms(stages["postprocess"])),
        ("total_ms", total),
        ("detections_per_frame", detections_count / float(runs)),
        ("includes", "letterbox + normalise, infer (incl. host<->device copies), NMS + unletterbox; excludes image "
                     "decoding/capture and drawing"),
    ])
