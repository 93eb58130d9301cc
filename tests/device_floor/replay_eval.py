"""Run under Python 3.6 with JetPack 4.6's numpy and OpenCV (make_envs.sh's ``jetpack`` environment), where no
backend can be installed: TensorRT needs a Jetson, and onnxruntime's Python 3.6 wheels (1.4 to 1.10 checked) require
numpy >= 1.16.6.

`jetson.benchmark.evaluate_variant` does here what it does on the Nano — reads the VOC annotations and images,
letterboxes and normalises with OpenCV 4.1.1, decodes the outputs, runs the numpy NMS and computes VOC AP with numpy
1.13.3 — and only the inference is a test double: ``ReplayRunner`` hands back, call by call, the outputs ONNX Runtime
produced on the host for the same images, and measures how far this side's pre-processed input is from the host's.

    PYTHONPATH=DIR python replay_eval.py BUNDLE RECORDING.npz VOCROOT OUT.json   # DIR holds trt/, runtime/, jetson/

RECORDING.npz (written by tests/test_device_runtime_floor.py): ``ids`` (image ids in call order), ``input_<k>`` and
``output_<k>_<name>`` for call k. OUT.json: the evaluation result, every image's detections, ``max_input_diff``, and
the latency and per-layer summaries of fixed samples (`runtime.measure`, `trt.profiler`; numpy statistics).
"""
import collections
import json
import sys

import numpy as np

import jetson.benchmark as benchmark
from jetson.voc_eval_lite import read_voc_split
from runtime.bundle import load_bundle
from runtime.measure import summarize_ms
from trt.profiler import LayerTimes


class ReplayRunner(object):
    """Test double for a backend: returns the host's recorded outputs for call k (not an inference)."""

    def __init__(self, recording, output_names):
        self.recording = recording
        self.output_names = output_names
        self.calls = 0
        self.max_input_diff = 0.0

    def infer(self, feed):
        k = self.calls
        self.calls += 1
        (tensor,) = feed.values()
        recorded = self.recording["input_{}".format(k)]
        if tensor.shape != recorded.shape or tensor.dtype != recorded.dtype:
            raise ValueError("call {}: input {} {} but the host fed {} {}".format(
                k, tensor.shape, tensor.dtype, recorded.shape, recorded.dtype))
        self.max_input_diff = max(self.max_input_diff, float(np.max(np.abs(tensor - recorded))))
        return dict((name, self.recording["output_{}_{}".format(k, name)]) for name in self.output_names)


def record_detections(module):
    """Wrap ``module.detections_from_outputs`` (what `evaluate_variant` calls) to keep every image's detections as
    lists: boxes, scores, labels. Returns the list they are appended to. The host side of the test does the same."""
    decode = module.detections_from_outputs
    kept = []

    def decode_and_keep(outputs, config, meta):
        found = decode(outputs, config, meta)
        kept.append([found.boxes.tolist(), found.scores.tolist(), found.labels.tolist()])
        return found

    module.detections_from_outputs = decode_and_keep
    return kept


def timing_summaries():
    """The latency summary and the per-layer profile table on fixed samples (numpy statistics, no device needed)."""
    samples = [(7 * k % 23) * 0.31 + 2.0 for k in range(57)]
    layers = LayerTimes()
    for k, ms in enumerate(samples):
        layers.add("conv{}".format(k % 5), ms / (1 + k % 5))
    return {"latency": summarize_ms(samples), "layers": layers.summary()}


def main(argv):
    bundle_dir, recording_path, voc_root, out_path = argv
    manifest = load_bundle(bundle_dir)
    recording = np.load(recording_path)
    ids = [str(i) for i in recording["ids"]]
    records, ground_truths = read_voc_split(voc_root, "test", classes=manifest["classes"])
    by_id = dict((r.image_id, r) for r in records)
    records = [by_id[i] for i in ids]
    ground_truths = collections.OrderedDict((i, ground_truths[i]) for i in ids)
    output_names = sorted(str(k)[len("output_0_"):] for k in recording.files if str(k).startswith("output_0_"))
    runner = ReplayRunner(recording, output_names)
    kept = record_detections(benchmark)
    result = benchmark.evaluate_variant(runner, records, ground_truths, manifest)
    if runner.calls != len(ids):
        raise RuntimeError("{} inference calls for {} recorded images".format(runner.calls, len(ids)))
    result["max_input_diff"] = runner.max_input_diff
    result["numpy"] = np.__version__
    result["detections"] = kept
    result["summaries"] = timing_summaries()
    with open(out_path, "w") as handle:
        json.dump(benchmark._json_safe(result), handle, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
