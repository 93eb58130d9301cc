"""Pre-processing + post-processing + NMS time against ONNX Runtime inference time, per bundle variant.

    python benchmarks/device_prepost.py BUNDLE [--variants baseline,pruned] [--video FILE] [--frames 120]
                                        [--threads 1] [--json OUT] [--md OUT] [--note TEXT]

Acceptance (issue 6): pre + post + NMS <= 15% of the ONNX Runtime inference time at 320 x 320.

For every decoded frame of the video (decoding is done first and not timed) and every variant, in rounds that
alternate the variants so that background load hits them alike:

- ``letterbox``: `runtime.preprocess.letterbox` (one cv2.warpAffine, the training letterbox);
- ``normalise``: `runtime.preprocess.normalise` (colour order, scale, mean/std, NCHW, by table lookup);
- ``infer``: `runtime.runners.OnnxRuntimeRunner.infer` (ONNX Runtime on the CPU, ``--threads`` intra-op threads);
- ``postprocess``: `runtime.postprocess.detections_from_outputs` (score threshold, pre-NMS top-k, class-wise NMS,
  max detections, un-letterbox and clip) with the manifest's NMS settings.

The ratio reported is ``(mean letterbox + mean normalise + mean postprocess) / mean infer`` (and the same with
medians), by wall clock and by this thread's CPU time (``CLOCK_THREAD_CPUTIME_ID``; with one ONNX Runtime thread
and one cv2 thread all the work runs on the calling thread). On a machine shared with other jobs the wall-clock
figures include time spent preempted, a few ms at random in any stage; the CPU-time ratio does not. Candidates entering NMS and detections kept are reported too: post-processing time grows with them, and
a random-init model (scores near 0.5 everywhere) is close to the worst case that ``pre_nms_topk`` allows.

Device-compatible: Python 3.6 syntax; uses only runtime/ and jetson/ (numpy, cv2, onnxruntime); no torch or onnx.
"""

import argparse
import collections
import datetime
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from runtime.bundle import BundleError, load_bundle, variant_path  # noqa: E402
from runtime.environment import environment  # noqa: E402
from runtime.fileio import atomic_write_bytes, atomic_write_json  # noqa: E402
from runtime.lazy import require  # noqa: E402
from runtime.measure import summarize_ms  # noqa: E402
from runtime.postprocess import PostprocessConfig, detections_from_outputs  # noqa: E402
from runtime.preprocess import PreprocessConfig, letterbox, normalise  # noqa: E402
from runtime.runners import OnnxRuntimeRunner  # noqa: E402

DEFAULT_VIDEO = os.path.join(os.path.dirname(REPO), "shared", "data", "video", "eth-sunnyday.mp4")
DEFAULT_JSON = os.path.join(REPO, "benchmarks", "results", "device_prepost.json")
DEFAULT_MD = os.path.join(REPO, "benchmarks", "results", "device_prepost.md")
ACCEPTANCE = 0.15
STAGES = ("letterbox", "normalise", "infer", "postprocess")


def read_frames(path, count):
    """The first ``count`` frames of a video, decoded (BGR uint8)."""
    cv2 = require("cv2", "device_prepost")
    if not os.path.isfile(path):
        raise IOError("{}: video file not found (pass --video)".format(path))
    capture = cv2.VideoCapture(path)
    frames = []
    try:
        while len(frames) < count:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        capture.release()
    if not frames:
        raise IOError("{}: no frame could be decoded".format(path))
    return frames


def _clocks():
    return time.perf_counter(), time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID)


def one_frame(runner, frame, pre, post):
    """(wall ms per stage, thread-CPU ms per stage, NMS candidates, detections) of one frame."""
    c0 = _clocks()
    boxed, meta = letterbox(frame, pre.size, pre.pad_value)
    c1 = _clocks()
    tensor = normalise(boxed, pre)
    c2 = _clocks()
    outputs = runner.infer({pre.input_name: tensor})
    c3 = _clocks()
    detections = detections_from_outputs(outputs, post, meta)
    c4 = _clocks()
    candidates = int(np.count_nonzero(np.asarray(outputs[post.scores_name]) > post.score_threshold))
    marks = (c0, c1, c2, c3, c4)
    wall = tuple((b[0] - a[0]) * 1000.0 for a, b in zip(marks, marks[1:]))
    cpu = tuple((b[1] - a[1]) * 1000.0 for a, b in zip(marks, marks[1:]))
    return wall, cpu, min(candidates, post.pre_nms_topk or candidates), len(detections.scores)


def measure(bundle, names, frames, threads, warmup, log):
    manifest = load_bundle(bundle, check_onnx=True)
    pre = PreprocessConfig.from_manifest(manifest)
    post = PostprocessConfig.from_manifest(manifest)
    runners = collections.OrderedDict(
        (name, OnnxRuntimeRunner(variant_path(bundle, manifest, name), threads=threads)) for name in names)
    samples = collections.OrderedDict(
        (name, {"stages": dict((s, []) for s in STAGES), "cpu": dict((s, []) for s in STAGES), "candidates": [],
                "detections": []}) for name in names)
    for runner in runners.values():
        runner.activate()
    try:
        for name, runner in runners.items():
            for index in range(warmup):
                one_frame(runner, frames[index % len(frames)], pre, post)
        for index, frame in enumerate(frames):
            order = names[index % len(names):] + names[:index % len(names)]
            for name in order:
                times, cpu, candidates, kept = one_frame(runners[name], frame, pre, post)
                for stage, value, cpu_value in zip(STAGES, times, cpu):
                    samples[name]["stages"][stage].append(value)
                    samples[name]["cpu"][stage].append(cpu_value)
                samples[name]["candidates"].append(candidates)
                samples[name]["detections"].append(kept)
            if (index + 1) % 40 == 0:
                log("  {}/{} frames".format(index + 1, len(frames)))
    finally:
        for runner in runners.values():
            runner.deactivate()
    rows = collections.OrderedDict()
    for name in names:
        stats = collections.OrderedDict((s, summarize_ms(samples[name]["stages"][s])) for s in STAGES)
        prepost_mean = stats["letterbox"]["mean"] + stats["normalise"]["mean"] + stats["postprocess"]["mean"]
        prepost_median = stats["letterbox"]["median"] + stats["normalise"]["median"] + stats["postprocess"]["median"]
        ratio = prepost_mean / stats["infer"]["mean"]
        cpu = collections.OrderedDict((s, summarize_ms(samples[name]["cpu"][s])) for s in STAGES)
        cpu_prepost = cpu["letterbox"]["mean"] + cpu["normalise"]["mean"] + cpu["postprocess"]["mean"]
        rows[name] = collections.OrderedDict([
            ("onnx", variant_path(bundle, manifest, name)),
            ("flops", manifest["variants"][name]["flops"]),
            ("stages_ms", stats),
            ("prepost_mean_ms", prepost_mean),
            ("prepost_median_ms", prepost_median),
            ("ratio_mean", ratio),
            ("ratio_median", prepost_median / stats["infer"]["median"]),
            ("cpu_stages_ms", cpu),
            ("cpu_prepost_mean_ms", cpu_prepost),
            ("cpu_ratio_mean", cpu_prepost / cpu["infer"]["mean"]),
            ("meets_acceptance", bool(ratio <= ACCEPTANCE)),
            ("nms_candidates_mean", float(np.mean(samples[name]["candidates"]))),
            ("detections_mean", float(np.mean(samples[name]["detections"]))),
        ])
    return manifest, pre, post, rows


def markdown(report):
    lines = ["# Pre/post-processing against ONNX Runtime inference", ""]
    if report.get("note"):
        lines.extend(["> " + report["note"], ""])
    s = report["settings"]
    lines.extend([
        "- Bundle: `{}`, input {} x {}; NMS: score > {}, IoU > {}, pre-NMS top-k {}, max {} detections.".format(
            report["bundle"], s["input_size"], s["input_size"], s["score_threshold"], s["iou_threshold"],
            s["pre_nms_topk"], s["max_detections"]),
        "- Frames: {} decoded frames of `{}` ({}x{}), decoding not timed; {} warm-up frames per variant; variants "
        "alternate frame by frame.".format(s["frames"], s["video"], s["frame_width"], s["frame_height"], s["warmup"]),
        "- ONNX Runtime {} on the CPU, {} intra-op thread(s); cv2 threads {}.".format(
            report["environment"].get("onnxruntime"), s["threads"], s["cv2_threads"]),
        "- Acceptance: (letterbox + normalise + postprocess) / infer <= {:.0f}% (means).".format(100 * ACCEPTANCE),
        "",
        "| variant | clock | letterbox ms | normalise ms | infer ms | postprocess ms (NMS incl.) | pre+post ms | "
        "pre+post / infer (mean) | (median) | NMS candidates | detections | <= 15% (wall, mean) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ])
    for name, row in report["variants"].items():
        st, cpu = row["stages_ms"], row["cpu_stages_ms"]
        lines.append("| {} | wall | {:.3f} | {:.3f} | {:.2f} | {:.3f} | {:.3f} | {:.1f}% | {:.1f}% | {:.0f} | {:.1f} | "
                     "{} |".format(
                         name, st["letterbox"]["mean"], st["normalise"]["mean"], st["infer"]["mean"],
                         st["postprocess"]["mean"], row["prepost_mean_ms"], 100 * row["ratio_mean"],
                         100 * row["ratio_median"], row["nms_candidates_mean"], row["detections_mean"],
                         "yes" if row["meets_acceptance"] else "NO"))
        lines.append("| {} | thread CPU | {:.3f} | {:.3f} | {:.2f} | {:.3f} | {:.3f} | {:.1f}% | - | | | |".format(
            name, cpu["letterbox"]["mean"], cpu["normalise"]["mean"], cpu["infer"]["mean"], cpu["postprocess"]["mean"],
            row["cpu_prepost_mean_ms"], 100 * row["cpu_ratio_mean"]))
    lines.extend(["", "Stage times are means over the frames (medians, p90/p99/std in the JSON). 'thread CPU' is the "
                  "CPU time of the measuring thread (immune to preemption by other jobs).", "",
                  "## Environment", "", "```"])
    for key, value in report["environment"].items():
        lines.append("{}: {}".format(key, value))
    lines.extend(["```", ""])
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="deploy bundle folder")
    parser.add_argument("--variants", help="comma-separated variants (default: all)")
    parser.add_argument("--video", default=DEFAULT_VIDEO, help="video whose frames are used (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=120, help="frames timed per variant (default 120)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed frames per variant first (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--cv2-threads", type=int, default=1, help="cv2.setNumThreads (default 1)")
    parser.add_argument("--json", default=DEFAULT_JSON, help="JSON output (default: %(default)s)")
    parser.add_argument("--md", default=DEFAULT_MD, help="Markdown output (default: %(default)s)")
    parser.add_argument("--note", help="a sentence stored with the results (what the bundle is)")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--frames and --threads must be >= 1, --warmup >= 0")

    cv2 = require("cv2", "device_prepost")
    cv2.setNumThreads(args.cv2_threads)
    log = lambda text: print(text, flush=True)  # noqa: E731
    try:
        manifest = load_bundle(args.bundle, check_onnx=True)
    except BundleError as exc:
        sys.stderr.write("device_prepost: {}\n".format(exc))
        return 2
    names = [n.strip() for n in args.variants.split(",")] if args.variants else list(manifest["variants"])
    unknown = [n for n in names if n not in manifest["variants"]]
    if unknown:
        sys.stderr.write("device_prepost: variants {} not in {} (it has {})\n".format(
            unknown, args.bundle, sorted(manifest["variants"])))
        return 2
    frames = read_frames(args.video, args.frames)
    log("device_prepost: {} frames of {}, variants {}".format(len(frames), args.video, ", ".join(names)))
    manifest, pre, post, rows = measure(args.bundle, names, frames, args.threads, args.warmup, log)
    report = collections.OrderedDict([
        ("format", "jetson-compress-prepost"), ("format_version", 1),
        ("created", datetime.datetime.now().replace(microsecond=0).isoformat()),
        ("bundle", os.path.abspath(args.bundle)), ("note", args.note),
        ("acceptance", "(letterbox + normalise + postprocess) / infer <= {} (means)".format(ACCEPTANCE)),
        ("settings", collections.OrderedDict([
            ("input_size", pre.size), ("video", args.video), ("frames", len(frames)),
            ("frame_width", int(frames[0].shape[1])), ("frame_height", int(frames[0].shape[0])),
            ("warmup", args.warmup), ("threads", args.threads), ("cv2_threads", cv2.getNumThreads()),
            ("score_threshold", post.score_threshold), ("iou_threshold", post.iou_threshold),
            ("pre_nms_topk", post.pre_nms_topk), ("max_detections", post.max_detections)])),
        ("variants", rows),
        ("environment", environment(probe_cuda=False)),
    ])
    atomic_write_json(args.json, report)
    atomic_write_bytes(args.md, markdown(report).encode("utf-8"))
    for name, row in rows.items():
        log("{:<10} pre+post {:.2f} ms, infer {:.2f} ms -> {:.1f}% ({}); thread CPU {:.2f} / {:.2f} ms -> {:.1f}%; "
            "{:.0f} NMS candidates, {:.1f} detections".format(
                name, row["prepost_mean_ms"], row["stages_ms"]["infer"]["mean"], 100 * row["ratio_mean"],
                "meets <= 15%" if row["meets_acceptance"] else "ABOVE 15%", row["cpu_prepost_mean_ms"],
                row["cpu_stages_ms"]["infer"]["mean"], 100 * row["cpu_ratio_mean"], row["nms_candidates_mean"],
                row["detections_mean"]))
    log("wrote {} and {}".format(args.json, args.md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
