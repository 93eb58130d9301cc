"""On-device benchmark of a deploy bundle: every variant side by side in one run, with ratios to the baseline.

    python3 -m jetson.benchmark BUNDLE [--backend auto|trt|ort] [--variants baseline,pruned] [--runs 200]
                                [--warmup 20] [--json OUT] [--md OUT] [--eval VOCROOT] [--split test] [--threads N]

1. The bundle is validated (`runtime.bundle.load_bundle`, sha256 and ONNX signatures included).
2. One runner per variant is created and kept active for the whole run: with ``trt`` the FP16 engine is built on
   first use and cached in ``BUNDLE/engines/`` (`trt.cache`), then reused; ``ort`` runs ONNX Runtime on the CPU.
3. Latency: ``--warmup`` untimed runs per variant, then ``--runs`` timed runs per variant, interleaved in rounds of
   ``--round-size`` with the variant order rotated each round, so that clock, thermal and background drift hits
   every variant alike. ``end_to_end_ms`` is the wall time of ``runner.infer`` (host<->device copies included);
   ``gpu_ms`` (trt only) the CUDA-event time of the execution alone. Reported: mean, median, p90, p99, std.
4. Pipeline FPS (`runtime.measure.pipeline_fps`): letterbox + normalise, infer, NMS + unletterbox on decoded frames
   (the ``--eval`` images when given, else synthetic frames); capture/decoding and drawing excluded.
5. Memory (`runtime.measure`): process RSS before and after loading each variant, peak RSS, the backend's figures
   (engine size, engine device memory, free-memory delta of the load) and one tegrastats sample on a Jetson.
6. Optionally AP50 (VOC07 11-point, and all-point) of every variant on a VOC split (`jetson.voc_eval_lite`, the
   host's matching rules), at score threshold 0.01 like the host's evaluation.
7. Ratios against the baseline: latency speed-up (median and mean), GPU speed-up, pipeline FPS ratio, and the FLOPs,
   parameter and ONNX-size ratios from the manifest.

Writes JSON (``format: jetson-compress-benchmark``, v1) and a Markdown table; prints progress while measuring.
Exit codes: 0 done; 2 unusable bundle, bad arguments, missing package or unreadable VOC folder; 1 anything else.

Device module: Python 3.6 syntax, numpy at module level; cv2, onnxruntime, tensorrt, pycuda imported lazily; never
imports torch, onnx or the host packages.
"""

import argparse
import collections
import contextlib
import datetime
import math
import os
import sys
import time

import numpy as np

from jetson.bundle_runner import (
    BACKEND_NAMES, BACKENDS, VariantError, pick_variants, resolve_backend, runner_for_variant,
)
from jetson.voc_eval_lite import VOCError
from runtime.bundle import BundleError, load_bundle
from runtime.lazy import MissingDependencyError, require
from runtime.measure import environment, pipeline_fps, summarize_ms, tegrastats_sample
from runtime.memory import current_rss_mib, peak_rss_mib
from runtime.postprocess import PostprocessConfig, detections_from_outputs
from runtime.preprocess import ManifestError, PreprocessConfig, preprocess

__all__ = ["FORMAT", "FORMAT_VERSION", "synthetic_frames", "interleaved_latency", "evaluate_variant", "ratios",
           "markdown_report", "run_benchmark", "main"]

FORMAT = "jetson-compress-benchmark"
FORMAT_VERSION = 1
PIPELINE_FRAMES = 16  # decoded frames kept in memory for the pipeline measurement


def _print(text):
    print(text, flush=True)


def synthetic_frames(count=4, width=640, height=480, seed=0):
    """Deterministic BGR frames (gradients, noise and filled rectangles) for when no real images are given."""
    rng = np.random.RandomState(seed)
    frames = []
    ys, xs = np.mgrid[0:height, 0:width]
    for index in range(count):
        frame = np.empty((height, width, 3), dtype=np.uint8)
        frame[:, :, 0] = (xs * 255 // max(width - 1, 1) + 40 * index) % 256
        frame[:, :, 1] = (ys * 255 // max(height - 1, 1)) % 256
        frame[:, :, 2] = rng.randint(0, 256, size=(height, width))
        for _ in range(6):
            x0, y0 = rng.randint(0, width - 40), rng.randint(0, height - 80)
            frame[y0:y0 + rng.randint(40, 200), x0:x0 + rng.randint(20, 80)] = rng.randint(0, 256, size=3)
        frames.append(frame)
    return frames


def _read_images(paths):
    cv2 = require("cv2", "jetson.benchmark")
    frames = []
    for path in paths:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise IOError("{}: cannot be read as an image".format(path))
        frames.append(image)
    return frames


def interleaved_latency(runners, feed, runs, warmup, round_size=10, log=None):
    """Per-variant latency samples from rounds that alternate the variants (order rotated each round).

    Args:
        runners: ordered dict name -> active runner.
        feed: the input dict (the same tensor for every variant: all variants share the bundle's input).
        runs: timed runs per variant; warmup: untimed runs per variant first; round_size: runs per turn.

    Returns:
        {name: {"end_to_end": [ms...], "gpu": [ms...]}}.
    """
    log = log or (lambda text: None)
    names = list(runners)
    runs, warmup, round_size = int(runs), int(warmup), max(1, int(round_size))
    if runs < 1 or warmup < 0:
        raise ValueError("need runs >= 1 and warmup >= 0; got runs={} warmup={}".format(runs, warmup))
    for name in names:
        for _ in range(warmup):
            runners[name].infer(feed)
    samples = collections.OrderedDict((name, {"end_to_end": [], "gpu": []}) for name in names)
    rounds = int(math.ceil(runs / float(round_size)))
    report_every = max(1, rounds // 10)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            runner = runners[name]
            todo = min(round_size, runs - len(samples[name]["end_to_end"]))
            for _ in range(todo):
                start = time.perf_counter()
                runner.infer(feed)
                samples[name]["end_to_end"].append((time.perf_counter() - start) * 1000.0)
                gpu_ms = getattr(runner, "last_gpu_ms", None)
                if gpu_ms is not None:
                    samples[name]["gpu"].append(float(gpu_ms))
        if (round_index + 1) % report_every == 0 or round_index + 1 == rounds:
            log("  round {}/{}: {}".format(round_index + 1, rounds, ", ".join(
                "{} median {:.2f} ms".format(n, float(np.median(samples[n]["end_to_end"]))) for n in names)))
    return samples


def evaluate_variant(runner, records, ground_truths, manifest, score_threshold=0.01, log=None):
    """AP50 of one active runner over VOC images (`jetson.voc_eval_lite`, VOC07 and all-point, per source)."""
    from jetson.voc_eval_lite import Detections as EvalDetections
    from jetson.voc_eval_lite import evaluate_all

    cv2 = require("cv2", "jetson.benchmark --eval")
    log = log or (lambda text: None)
    pre = PreprocessConfig.from_manifest(manifest)
    post = PostprocessConfig.from_manifest(manifest, score_threshold=score_threshold)
    detections = collections.OrderedDict()
    started = time.time()
    for index, record in enumerate(records):
        image = cv2.imread(record.path, cv2.IMREAD_COLOR)
        if image is None:
            raise IOError("{}: cannot be read as an image".format(record.path))
        if (image.shape[1], image.shape[0]) != (record.width, record.height):
            raise IOError("{}: image is {}x{} but its annotation says {}x{}".format(
                record.path, image.shape[1], image.shape[0], record.width, record.height))
        tensor, meta = preprocess(image, pre)
        found = detections_from_outputs(runner.infer({pre.input_name: tensor}), post, meta)
        detections[record.image_id] = EvalDetections(found.boxes, found.scores.astype(np.float64), found.labels)
        if (index + 1) % 50 == 0:
            log("    {}/{} images".format(index + 1, len(records)))
    result = evaluate_all(detections, ground_truths, list(manifest["classes"]))
    result["num_images"] = len(records)
    result["seconds"] = round(time.time() - started, 3)
    result["settings"] = collections.OrderedDict([
        ("score_threshold", post.score_threshold), ("iou_threshold", post.iou_threshold),
        ("max_detections", post.max_detections), ("pre_nms_topk", post.pre_nms_topk)])
    return result


def _first_class_ap(result, metric="voc07_11point"):
    values = list(result[metric]["ap"].values())
    return float(values[0]) if values else None


def ratios(variants, reference):
    """Per variant: speed-ups and cost ratios against ``reference`` (the baseline)."""
    base = variants[reference]
    out = collections.OrderedDict()

    def div(a, b):
        return None if a is None or b in (None, 0) else float(a) / float(b)

    for name, row in variants.items():
        entry = collections.OrderedDict()
        entry["latency_speedup_median"] = div(base["latency_ms"]["median"], row["latency_ms"]["median"])
        entry["latency_speedup_mean"] = div(base["latency_ms"]["mean"], row["latency_ms"]["mean"])
        entry["gpu_speedup_median"] = (div(base["gpu_ms"]["median"], row["gpu_ms"]["median"])
                                       if base.get("gpu_ms") and row.get("gpu_ms") else None)
        entry["pipeline_fps_ratio"] = div((row.get("pipeline") or {}).get("fps"),
                                          (base.get("pipeline") or {}).get("fps"))
        entry["flops_ratio"] = div(row["flops"], base["flops"])
        entry["params_ratio"] = div(row["params"], base["params"])
        entry["onnx_bytes_ratio"] = div(row["onnx_bytes"], base["onnx_bytes"])
        if row.get("ap50") is not None and base.get("ap50") is not None:
            entry["ap50_delta"] = row["ap50"] - base["ap50"]
        out[name] = entry
    return out


def _fmt(value, spec="{:.2f}", none="-"):
    return none if value is None else spec.format(value)


def markdown_report(report):
    """The benchmark as Markdown: a side-by-side table, what each figure includes, memory, environment."""
    env = report["environment"]
    settings = report["settings"]
    backend = report["backend"]
    lines = ["# On-device benchmark: {}".format(report["bundle"]), ""]
    if report.get("note"):
        lines.extend(["> " + report["note"], ""])
    where = env.get("device_model") or env.get("cpu_model") or env.get("platform")
    jetson = env.get("jetson") or {}
    power = env.get("power_mode") or {}
    backend_text = BACKEND_NAMES[backend]
    if backend == "ort":
        backend_text += " {} (CPU, {} threads)".format(env.get("onnxruntime"), settings.get("threads") or "default")
    else:
        precisions = sorted(set(str(row["runner"].get("precision", "?")).upper()
                                for row in report["variants"].values()))
        backend_text += " {} {}".format((env.get("tensorrt") or {}).get("version"), "/".join(precisions))
    lines.append("- Device: {}{}{}".format(
        where, ", L4T {} / JetPack {}".format(jetson.get("l4t"), jetson.get("jetpack")) if jetson.get("l4t") else "",
        ", power mode {}".format(power.get("power_mode")) if power.get("power_mode") else ""))
    lines.append("- Backend: {} ({})".format(backend_text, report["backend_reason"]))
    lines.append("- Latency: {} timed runs per variant after {} warm-up runs, interleaved in rounds of {} with the "
                 "order rotated each round (all variants loaded at once).".format(
                     settings["runs"], settings["warmup"], settings["round_size"]))
    lines.append("- Pipeline: {} frames from {}.".format(settings["pipeline_runs"], settings["frames_source"]))
    lines.append("")
    reference = report["reference"]
    head = ("| variant | GFLOPs | params (M) | mean ms | median ms | p90 | p99 | std | GPU median ms | "
            "pipeline FPS | speed-up (median) | FLOPs ratio | params ratio | AP50 (VOC07) |")
    lines.extend([head, "|" + "---|" * 14])
    for name, row in report["variants"].items():
        lat = row["latency_ms"]
        ratio = report["ratios"][name]
        lines.append("| {} | {:.3f} | {:.3f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {} | {} | {} | {} | {} | {} "
                     "|".format(name, row["flops"] / 1e9, row["params"] / 1e6, lat["mean"], lat["median"], lat["p90"],
                                lat["p99"], lat["std"], _fmt((row.get("gpu_ms") or {}).get("median")),
                                _fmt((row.get("pipeline") or {}).get("fps"), "{:.1f}"),
                                _fmt(ratio["latency_speedup_median"], "{:.2f}x"), _fmt(ratio["flops_ratio"]),
                                _fmt(ratio["params_ratio"]), _fmt(row.get("ap50"), "{:.4f}")))
    lines.extend([
        "",
        "Speed-up = {ref} median latency / variant median latency; FLOPs and params ratios = variant / {ref} (from the "
        "manifest). Latency (mean..std) is end-to-end `infer()` wall time including host<->device copies; GPU ms "
        "(TensorRT only) is CUDA-event time of the execution alone. Pipeline FPS = 1000 / mean(letterbox + "
        "normalise + infer + NMS + unletterbox), frame decoding and drawing excluded.".format(ref=reference), ""])
    lines.extend(["## Memory", "", "| variant | RSS after load (MiB) | RSS added by load (MiB) | engine / model bytes | "
                  "engine device memory (MiB) | CUDA free-memory delta of load (MiB) |", "|---|---|---|---|---|---|"])
    for name, row in report["variants"].items():
        memory = row["memory"]
        backend_memory = memory.get("backend") or {}
        lines.append("| {} | {} | {} | {} | {} | {} |".format(
            name, _fmt(memory.get("rss_after_load_mib"), "{:.1f}"), _fmt(memory.get("rss_load_delta_mib"), "{:.1f}"),
            backend_memory.get("serialized_engine_bytes", row["onnx_bytes"]),
            _fmt(_mib(backend_memory.get("engine_device_memory_bytes")), "{:.1f}"),
            _fmt(_mib(backend_memory.get("load_delta_bytes")), "{:.1f}")))
    process = report["memory"]
    lines.extend(["", "Process RSS before loading: {} MiB; peak: {} MiB (all variants loaded together, so the peak "
                  "covers them all).{}".format(
                      _fmt(process.get("rss_before_load_mib"), "{:.1f}"), _fmt(process.get("peak_rss_mib"), "{:.1f}"),
                      " tegrastats: RAM {} / {} MiB.".format(process["tegrastats"]["ram_used_mib"],
                                                           process["tegrastats"]["ram_total_mib"])
                      if process.get("tegrastats") else ""), ""])
    if any(row.get("accuracy") for row in report["variants"].values()):
        lines.extend(["## Accuracy", "", "| variant | images | AP50 VOC07 | AP50 all-point | per source (VOC07) |",
                      "|---|---|---|---|---|"])
        for name, row in report["variants"].items():
            acc = row.get("accuracy")
            if not acc:
                continue
            per_source = ", ".join("{} {:.4f}".format(source, _first_class_ap(res))
                                   for source, res in acc.get("per_source", {}).items())
            lines.append("| {} | {} | {:.4f} | {:.4f} | {} |".format(
                name, acc["num_images"], _first_class_ap(acc), _first_class_ap(acc, "all_point"), per_source or "-"))
        lines.append("")
    lines.extend(["## Environment", "", "```"])
    for key, value in env.items():
        lines.append("{}: {}".format(key, value))
    lines.extend(["```", ""])
    return "\n".join(lines)


def _mib(value):
    return None if value is None else value / 1048576.0


def run_benchmark(bundle_dir, backend="auto", variants=None, runs=200, warmup=20, threads=None, json_out=None,
                  md_out=None, eval_root=None, split="test", engine_dir=None, workspace_mib=512, rebuild=False,
                  pipeline_runs=50, round_size=10, eval_limit=None, eval_score_threshold=0.01, tegrastats=True,
                  log=None, note=None):
    """Measure every variant of the bundle side by side; returns the report dict (also written to json_out/md_out).

    Raises `runtime.bundle.BundleError` for an unusable bundle and ValueError for unknown variants.
    """
    log = log or _print
    bundle_dir = str(bundle_dir)
    manifest = load_bundle(bundle_dir, check_onnx=True)
    names = pick_variants(manifest, variants)
    backend, reason = resolve_backend(backend)
    log("jetson.benchmark: {} variant(s) {} of {} on {} ({})".format(len(names), ", ".join(names), bundle_dir,
                                                                     BACKEND_NAMES[backend], reason))
    threads = None if threads is None else int(threads)
    pre = PreprocessConfig.from_manifest(manifest)
    post = PostprocessConfig.from_manifest(manifest)

    records = ground_truths = None
    if eval_root:
        from jetson.voc_eval_lite import read_voc_split

        records, ground_truths = read_voc_split(eval_root, split, classes=manifest["classes"])
        if eval_limit:
            records = records[:int(eval_limit)]
            ground_truths = collections.OrderedDict((r.image_id, ground_truths[r.image_id]) for r in records)
        log("eval: {} images of split '{}' in {}".format(len(records), split, eval_root))
        frames = _read_images([r.path for r in records[:PIPELINE_FRAMES]])
        frames_source = "the first {} images of {} split '{}'".format(len(frames), eval_root, split)
    else:
        frames = synthetic_frames()
        frames_source = "{} synthetic 640x480 frames (few detections: pass --eval for real images)".format(len(frames))

    env = environment(probe_cuda=(backend == "trt"))
    rss_before = current_rss_mib()
    rows = collections.OrderedDict()
    with contextlib.ExitStack() as stack:
        runners = collections.OrderedDict()
        for name in names:
            runner, info = runner_for_variant(bundle_dir, manifest, name, backend, threads=threads,
                                              engine_dir=engine_dir, workspace_mib=workspace_mib, rebuild=rebuild,
                                              log=log)
            rss_start = current_rss_mib()
            started = time.time()
            stack.enter_context(runner)
            info["activate_seconds"] = round(time.time() - started, 3)
            rss_loaded = current_rss_mib()
            runners[name] = runner
            rows[name] = {"runner": info, "memory": collections.OrderedDict([
                ("rss_after_load_mib", rss_loaded),
                ("rss_load_delta_mib", None if rss_loaded is None or rss_start is None else rss_loaded - rss_start),
                ("backend", runner.memory_info())])}
            log("{}: loaded in {:.2f} s (RSS {:.1f} MiB)".format(name, info["activate_seconds"], rss_loaded or 0.0))

        feed = {pre.input_name: preprocess(frames[0], pre)[0]}
        log("latency: {} warm-up + {} timed runs per variant, interleaved in rounds of {}".format(
            warmup, runs, round_size))
        samples = interleaved_latency(runners, feed, runs, warmup, round_size, log)

        for name in names:
            log("pipeline: {} ({} frames)".format(name, pipeline_runs))
            rows[name]["pipeline"] = pipeline_fps(runners[name], frames, pre, post, warmup=min(5, len(frames)),
                                                  runs=pipeline_runs)
        if records is not None:
            for name in names:
                log("eval: {} on {} images".format(name, len(records)))
                rows[name]["accuracy"] = evaluate_variant(runners[name], records, ground_truths, manifest,
                                                          eval_score_threshold, log)
        tegra = tegrastats_sample() if tegrastats else None

    variants_out = collections.OrderedDict()
    for name in names:
        entry = manifest["variants"][name]
        row = collections.OrderedDict()
        row["flops"] = int(entry["flops"])
        row["macs"] = int(entry["macs"])
        row["params"] = int(entry["params"])
        row["onnx_bytes"] = int(entry["bytes"])
        row["latency_ms"] = summarize_ms(samples[name]["end_to_end"])
        row["gpu_ms"] = summarize_ms(samples[name]["gpu"]) if samples[name]["gpu"] else None
        row["samples_ms"] = [round(v, 4) for v in samples[name]["end_to_end"]]
        row["pipeline"] = rows[name]["pipeline"]
        row["memory"] = rows[name]["memory"]
        row["runner"] = rows[name]["runner"]
        row["accuracy"] = rows[name].get("accuracy")
        row["ap50"] = _first_class_ap(row["accuracy"]) if row["accuracy"] else None
        variants_out[name] = row
    reference = "baseline" if "baseline" in variants_out else names[0]
    report = collections.OrderedDict([
        ("format", FORMAT), ("format_version", FORMAT_VERSION),
        ("created", datetime.datetime.now().replace(microsecond=0).isoformat()),
        ("bundle", os.path.abspath(bundle_dir)), ("note", note), ("backend", backend), ("backend_reason", reason),
        ("settings", collections.OrderedDict([
            ("runs", int(runs)), ("warmup", int(warmup)), ("round_size", int(round_size)), ("interleaved", True),
            ("pipeline_runs", int(pipeline_runs)), ("threads", threads), ("frames_source", frames_source),
            ("eval_root", eval_root), ("split", split if eval_root else None),
            ("eval_score_threshold", eval_score_threshold if eval_root else None)])),
        ("reference", reference),
        ("variants", variants_out),
        ("ratios", ratios(variants_out, reference)),
        ("memory", collections.OrderedDict([
            ("rss_before_load_mib", rss_before), ("peak_rss_mib", peak_rss_mib()), ("tegrastats", tegra),
            ("source", "/proc/self/status VmRSS; getrusage ru_maxrss; tegrastats on a Jetson")])),
        ("environment", env),
        ("what", collections.OrderedDict([
            ("latency_ms", "wall time of runner.infer() incl. host<->device copies, interleaved rounds"),
            ("gpu_ms", "CUDA events around the TensorRT execution alone (None on ONNX Runtime)"),
            ("pipeline", "letterbox + normalise + infer + NMS + unletterbox on decoded frames; no capture/drawing"),
            ("ratios", "speed-ups are {0} / variant; cost ratios are variant / {0}".format(reference))])),
    ])

    for name in names:
        row = variants_out[name]
        ratio = report["ratios"][name]
        log("{:<12} median {:.2f} ms (p90 {:.2f}, p99 {:.2f}, std {:.2f}){}  pipeline {:.1f} FPS  speed-up {}  "
            "FLOPs x{:.2f}{}".format(
                name, row["latency_ms"]["median"], row["latency_ms"]["p90"], row["latency_ms"]["p99"],
                row["latency_ms"]["std"],
                "  GPU {:.2f} ms".format(row["gpu_ms"]["median"]) if row["gpu_ms"] else "",
                row["pipeline"]["fps"] or 0.0, _fmt(ratio["latency_speedup_median"], "{:.2f}x"),
                ratio["flops_ratio"], "  AP50 {:.4f}".format(row["ap50"]) if row["ap50"] is not None else ""))
    from runtime.fileio import atomic_write_bytes, atomic_write_json

    if json_out:
        atomic_write_json(json_out, _json_safe(report))
        log("wrote {}".format(json_out))
    if md_out:
        atomic_write_bytes(md_out, markdown_report(report).encode("utf-8"))
        log("wrote {}".format(md_out))
    return report


def _json_safe(value):
    """NaN -> None (strict JSON), recursively."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return collections.OrderedDict((k, _json_safe(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python3 -m jetson.benchmark",
        description="Measure every variant of a deploy bundle side by side on this device (TensorRT FP16 engines, "
                    "or ONNX Runtime on the CPU), with speed-ups against the baseline.",
        epilog="Exit codes: 0 done; 2 unusable bundle, bad arguments, missing package or unreadable VOC folder; "
               "1 anything else.")
    parser.add_argument("bundle", metavar="BUNDLE", help="deploy bundle folder (manifest.json + ONNX files)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="trt (TensorRT + pycuda), ort (ONNX Runtime, CPU) or auto (trt when importable)")
    parser.add_argument("--variants", help="comma-separated variants (default: all, baseline first)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per variant (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed runs per variant first (default 20)")
    parser.add_argument("--round-size", type=int, default=10,
                        help="runs per variant per turn of the interleaving (default 10)")
    parser.add_argument("--pipeline-runs", type=int, default=50, help="frames timed for pipeline FPS (default 50)")
    parser.add_argument("--json", metavar="OUT", help="JSON report (default BUNDLE/benchmark_<backend>.json)")
    parser.add_argument("--md", metavar="OUT", help="Markdown report (default BUNDLE/benchmark_<backend>.md)")
    parser.add_argument("--eval", metavar="VOCROOT", help="also measure AP50 on this VOC folder")
    parser.add_argument("--split", default="test", help="VOC split for --eval (default test)")
    parser.add_argument("--eval-limit", type=int, help="evaluate only the first N images of the split")
    parser.add_argument("--eval-score-threshold", type=float, default=0.01,
                        help="score threshold for AP (default 0.01, as the host's evaluation)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: its own)")
    parser.add_argument("--engine-dir", help="TensorRT engine cache (default BUNDLE/engines)")
    parser.add_argument("--workspace-mib", type=int, default=512, help="TensorRT builder workspace (default 512)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild TensorRT engines even when cached")
    parser.add_argument("--no-tegrastats", action="store_true", help="do not sample tegrastats")
    parser.add_argument("--note", help="one sentence stored in the report (e.g. which checkpoints the bundle holds)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.pipeline_runs < 1 or args.round_size < 1:
        parser.error("--runs, --pipeline-runs and --round-size must be >= 1 and --warmup >= 0")
    backend = resolve_backend(args.backend)[0]  # for the default file names; run_benchmark says why
    json_out = args.json or os.path.join(args.bundle, "benchmark_{}.json".format(backend))
    md_out = args.md or os.path.join(args.bundle, "benchmark_{}.md".format(backend))
    try:
        run_benchmark(args.bundle, backend=args.backend, variants=args.variants, runs=args.runs, warmup=args.warmup,
                      threads=args.threads, json_out=json_out, md_out=md_out, eval_root=args.eval, split=args.split,
                      engine_dir=args.engine_dir, workspace_mib=args.workspace_mib, rebuild=args.rebuild,
                      pipeline_runs=args.pipeline_runs, round_size=args.round_size, eval_limit=args.eval_limit,
                      eval_score_threshold=args.eval_score_threshold, tegrastats=not args.no_tegrastats,
                      note=args.note)
    except (BundleError, MissingDependencyError, VariantError, VOCError, ManifestError, IOError) as exc:
        sys.stderr.write("jetson.benchmark: {}\n".format(exc))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
