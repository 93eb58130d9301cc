"""Live pedestrian detection from a camera, a stream or a video file, with boxes and an honest FPS overlay.

    python3 -m jetson.camera_demo --bundle BUNDLE --source csi://0
    python3 -m jetson.camera_demo --bundle BUNDLE --source /dev/video0 --variant baseline --backend ort
    python3 -m jetson.camera_demo --bundle BUNDLE --source street.mp4 --headless --out out.mp4 [--loop]
                                  [--max-frames N] [--memory-log rss.csv --memory-every 100]

Each frame: capture -> letterbox + normalise -> infer -> NMS + unletterbox -> draw -> write and/or display. The
overlay says what its FPS covers: ``pipeline FPS (capture+pre+infer+post+draw+write)`` over the last 30 frames, and
the inference time alone in ms with the variant and backend. Sources are opened by `jetson.camera` (CSI through
GStreamer ``nvarguscamerasrc``, USB V4L2, RTSP, files); a live source that disappears is reopened with backoff
(``--retries``, ``--retry-delay``). Ctrl-C (SIGINT) or SIGTERM stops after the current frame: the capture is
released and the video writer closed, so the output file is complete; a second Ctrl-C stops at once (still
releasing both). At the end it prints frames, FPS, mean time per stage and peak RSS; ``--memory-log CSV`` records
RSS every ``--memory-every`` frames (to show that memory stays flat over long runs).

Exit codes: 0 finished (end of file, --max-frames, Ctrl-C, or q/Esc in the window); 2 bad arguments, unusable bundle,
a source or output that cannot be opened (the message names it), missing package; 3 the camera disappeared and did
not come back after every retry; 1 anything else.

Device module: Python 3.6 syntax, numpy at module level; cv2, onnxruntime, tensorrt, pycuda imported lazily; never
imports torch or onnx.
"""

import argparse
import collections
import os
import signal
import sys
import time

from jetson.bundle_runner import BACKENDS, BundleDetector, VariantError, pick_variants
from jetson.camera import CameraLostError, SourceOpenError, Camera, add_camera_arguments, options_from_args, \
    parse_source
from runtime.bundle import BundleError, load_bundle
from runtime.lazy import MissingDependencyError, require
from runtime.memory import current_rss_mib, peak_rss_mib
from runtime.preprocess import ManifestError

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_CAMERA_LOST", "RateMeter", "StopRequest", "draw_detections",
           "draw_overlay", "overlay_lines", "run_demo", "build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CAMERA_LOST = 3

BOX_COLOUR = (0, 220, 0)  # BGR
WINDOW = "jetson-compress camera demo"
STAGES = ("capture", "preprocess", "infer", "postprocess", "draw", "output")


class UsageError(Exception):
    """Something the user can fix (a path, an argument); printed without a traceback, exit code 2."""


class RateMeter(object):
    """Frames per second over the last ``window`` loop iterations (wall clock between frame completions)."""

    def __init__(self, window=30, clock=time.perf_counter):
        self._times = collections.deque(maxlen=int(window) + 1)
        self._clock = clock

    def tick(self):
        self._times.append(self._clock())

    @property
    def fps(self):
        if len(self._times) < 2:
            return None
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else None


class StopRequest(object):
    """Signal handler: the first SIGINT/SIGTERM asks the loop to stop after this frame; a second one leaves now."""

    def __init__(self):
        self.requested = False
        self.reason = None
        self._previous = {}

    def __call__(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.reason = "Ctrl-C" if signum == signal.SIGINT else "signal {}".format(signum)

    def install(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self)
        return self

    def restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def draw_detections(frame, detections, classes, colour=BOX_COLOUR):
    """Boxes with ``class score`` labels, drawn in place on a BGR frame."""
    cv2 = require("cv2", "draw_detections")
    height, width = frame.shape[:2]
    for box, score, label in zip(detections.boxes, detections.scores, detections.labels):
        x1, y1, x2, y2 = [int(round(float(v))) for v in box]
        x1, x2 = max(0, min(x1, width - 1)), max(0, min(x2, width - 1))
        y1, y2 = max(0, min(y1, height - 1)), max(0, min(y2, height - 1))
        cv2.rectangle(frame, (x1, y1), (x2, y2), colour, 2)
        name = classes[int(label)] if 0 <= int(label) < len(classes) else str(int(label))
        text = "{} {:.2f}".format(name, float(score))
        (text_w, text_h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        top = max(y1, text_h + 4)
        cv2.rectangle(frame, (x1, top - text_h - 4), (x1 + text_w + 4, top), colour, -1)
        cv2.putText(frame, text, (x1 + 2, top - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return frame


def overlay_lines(fps, stage_ms, count, describe, output_stages, score_threshold, window):
    """The overlay text: what the FPS includes, the inference time alone, what ran, how many detections."""
    return [
        "pipeline FPS {} (capture+pre+infer+post+draw{}, last {} frames)".format(
            "--" if fps is None else "{:.1f}".format(fps), output_stages, window),
        "infer {:.1f} ms | pre {:.1f} ms | post {:.1f} ms | {}".format(
            stage_ms["infer"], stage_ms["preprocess"], stage_ms["postprocess"], describe),
        "{} detection{} (score > {:.2f})".format(count, "" if count == 1 else "s", score_threshold),
    ]


def draw_overlay(frame, lines):
    """Text lines on a dark band at the top left of the frame, in place."""
    cv2 = require("cv2", "draw_overlay")
    scale = 0.5
    heights = []
    widths = []
    for line in lines:
        (w, h), _ = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        widths.append(w)
        heights.append(h)
    step = max(heights) + 8
    band_w = min(frame.shape[1], max(widths) + 12)
    band_h = min(frame.shape[0], step * len(lines) + 6)
    region = frame[:band_h, :band_w]
    region[...] = (region * 0.35).astype(region.dtype)
    for index, line in enumerate(lines):
        cv2.putText(frame, line, (6, step * (index + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return frame


def _has_display():
    if sys.platform != "linux":
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _open_writer(cv2, path, fourcc, fps, size):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError("--out {}: folder {} does not exist".format(path, folder))
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), float(fps), size)
    if not writer.isOpened():
        writer.release()
        raise UsageError("--out {}: cannot write a {} video with fourcc {} (try --fourcc MJPG with a .avi name)".format(
            path, "{}x{}".format(*size), fourcc))
    return writer


class _MemoryLog(object):
    """CSV of RSS over the run: frame, elapsed_s, rss_mib, peak_rss_mib, pipeline_fps."""

    def __init__(self, path):
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise UsageError("--memory-log {}: folder {} does not exist".format(path, folder))
        self._handle = open(path, "w")
        self._handle.write("frame,elapsed_s,rss_mib,peak_rss_mib,pipeline_fps\n")
        self.rows = []

    def write(self, frame_index, elapsed, fps):
        row = (frame_index, elapsed, current_rss_mib(), peak_rss_mib(), fps)
        self.rows.append(row)
        self._handle.write("{},{:.3f},{},{},{}\n".format(
            row[0], row[1], "" if row[2] is None else "{:.2f}".format(row[2]),
            "" if row[3] is None else "{:.2f}".format(row[3]), "" if fps is None else "{:.2f}".format(fps)))
        self._handle.flush()

    def close(self):
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def run_demo(args, opener=None, log=None):
    """The demo loop for parsed ``args``; returns an exit code. ``opener`` replaces `jetson.camera.open_capture`."""
    log = log or (lambda text: print(text, flush=True))
    cv2 = require("cv2", "jetson.camera_demo")
    try:
        manifest = load_bundle(args.bundle)
        variants = pick_variants(manifest, args.variant) if args.variant else \
            [("pruned" if "pruned" in manifest["variants"] else pick_variants(manifest)[0])]
    except (BundleError, VariantError) as exc:
        raise UsageError(str(exc))
    variant = variants[0]
    try:
        spec = parse_source(args.source)
    except ValueError as exc:
        raise UsageError(str(exc))
    if not args.headless and not _has_display():
        raise UsageError("no display (DISPLAY is not set): run with --headless [--out OUT.mp4]")
    if args.out and not args.out.lower().endswith((".mp4", ".avi", ".mkv", ".mov")):
        raise UsageError("--out {}: use a .mp4 (mp4v) or .avi (MJPG) file name".format(args.out))

    memory_log = _MemoryLog(args.memory_log) if args.memory_log else None
    camera = Camera(spec, options_from_args(args), opener=opener, log=log)
    detector = BundleDetector(args.bundle, manifest, variant, backend=args.backend, threads=args.threads,
                              engine_dir=args.engine_dir, score_threshold=args.score_threshold, log=log)
    writer = None
    stop = StopRequest()
    totals = collections.OrderedDict((stage, 0.0) for stage in STAGES)
    frames = 0
    detections_total = 0
    reason = None
    code = EXIT_OK
    output_stages = "+write" if args.out else ""
    if not args.headless:
        output_stages += "+display"
    meter = RateMeter(args.fps_window)
    started = None
    try:
        try:
            camera.open()
        except SourceOpenError as exc:
            raise UsageError(str(exc))
        log("source: {} ({})".format(spec.text, camera.description))
        detector.open()
        log("model: {} ({}); {}".format(detector.describe(), detector.backend_reason, detector.info.get("onnx")))
        stop.install()
        started = time.perf_counter()
        if memory_log is not None:
            memory_log.write(0, 0.0, None)
        log("running: {}{} (Ctrl-C stops cleanly)".format(
            "headless" if args.headless else "window '{}' (q or Esc quits)".format(WINDOW),
            ", writing {}".format(args.out) if args.out else ""))
        while not stop.requested:
            t0 = time.perf_counter()
            try:
                frame = camera.read()
            except CameraLostError as exc:
                log("error: {}".format(exc))
                code = EXIT_CAMERA_LOST
                reason = "camera lost"
                break
            t1 = time.perf_counter()
            if frame is None:
                reason = "end of file"
                break
            detections, stage_ms = detector.detect(frame)
            t2 = time.perf_counter()
            draw_detections(frame, detections, detector.classes)
            draw_overlay(frame, overlay_lines(meter.fps, stage_ms, len(detections.scores), detector.describe(),
                                              output_stages, detector.postprocess_config.score_threshold,
                                              args.fps_window))
            t3 = time.perf_counter()
            if args.out:
                if writer is None:
                    fps = args.out_fps or camera.fps or 30.0
                    writer = _open_writer(cv2, args.out, args.fourcc or _default_fourcc(args.out), fps,
                                          (frame.shape[1], frame.shape[0]))
                writer.write(frame)
            if not args.headless:
                cv2.imshow(WINDOW, frame)
                key = cv2.waitKey(1) & 0xFF
                if key in (ord("q"), 27):
                    stop.requested = True
                    stop.reason = "window closed (q/Esc)"
            t4 = time.perf_counter()
            meter.tick()
            frames += 1
            detections_total += len(detections.scores)
            totals["capture"] += (t1 - t0) * 1000.0
            for stage in ("preprocess", "infer", "postprocess"):
                totals[stage] += stage_ms[stage]
            totals["draw"] += (t3 - t2) * 1000.0
            totals["output"] += (t4 - t3) * 1000.0
            if memory_log is not None and frames % args.memory_every == 0:
                memory_log.write(frames, time.perf_counter() - started, meter.fps)
            if args.progress_every and frames % args.progress_every == 0:
                log("frame {}: pipeline {:.1f} FPS, infer {:.1f} ms, RSS {:.1f} MiB".format(
                    frames, meter.fps or 0.0, stage_ms["infer"], current_rss_mib() or 0.0))
            if args.max_frames and frames >= args.max_frames:
                reason = "--max-frames {}".format(args.max_frames)
                break
        if stop.requested and reason is None:
            reason = stop.reason
    except KeyboardInterrupt:
        reason = "second Ctrl-C"
    finally:
        stop.restore()
        camera.release()
        if writer is not None:
            writer.release()
        if not args.headless:
            cv2.destroyAllWindows()
        detector.close()
        elapsed = None if started is None else time.perf_counter() - started
        if memory_log is not None:
            if frames and (frames % args.memory_every) and elapsed is not None:
                memory_log.write(frames, elapsed, meter.fps)
            memory_log.close()
    _summary(log, frames, elapsed, totals, detections_total, output_stages, reason, camera, args, memory_log)
    return code


def _default_fourcc(path):
    return "MJPG" if path.lower().endswith(".avi") else "mp4v"


def _summary(log, frames, elapsed, totals, detections_total, output_stages, reason, camera, args, memory_log):
    log("stopped: {}".format(reason or "?"))
    if frames and elapsed:
        log("frames: {} in {:.2f} s -> {:.2f} FPS (capture+pre+infer+post+draw{}, mean over the run)".format(
            frames, elapsed, frames / elapsed, output_stages))
        log("mean ms per frame: {}".format(", ".join("{} {:.2f}".format(stage, total / frames)
                                                      for stage, total in totals.items())))
        log("detections: {:.2f} per frame".format(detections_total / float(frames)))
    else:
        log("frames: {}".format(frames))
    log("memory: peak RSS {:.1f} MiB, RSS now {:.1f} MiB".format(peak_rss_mib() or 0.0, current_rss_mib() or 0.0))
    if camera.is_live or camera.loops:
        log("source: {} reconnects, {} loops".format(camera.reconnects, camera.loops))
    if args.out and frames:
        log("output: {} ({} frames)".format(args.out, frames))
    if memory_log is not None and memory_log.rows:
        values = [row[2] for row in memory_log.rows[1:] if row[2] is not None]
        if values:
            log("memory log: {} ({} rows; RSS first {:.1f}, last {:.1f}, max {:.1f} MiB after the first frame)".format(
                memory_log.path, len(memory_log.rows), values[0], values[-1], max(values)))


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python3 -m jetson.camera_demo",
        description="Pedestrian detection on a CSI/USB camera, an RTSP stream or a video file, with boxes and an "
                    "FPS overlay that says what it includes.",
        epilog="Exit codes: 0 finished (end of file, --max-frames, Ctrl-C, q/Esc); 2 bad arguments, unusable bundle, "
               "source or output that cannot be opened; 3 the camera disappeared and did not come back; 1 other "
               "errors.")
    parser.add_argument("--bundle", required=True, help="deploy bundle folder")
    parser.add_argument("--variant", help="bundle variant to run (default: pruned if present, else baseline)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="trt (TensorRT FP16 engine, cached in BUNDLE/engines), ort (ONNX Runtime CPU), or auto")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    parser.add_argument("--engine-dir", help="TensorRT engine cache folder (default BUNDLE/engines)")
    parser.add_argument("--score-threshold", type=float, help="override the manifest's NMS score threshold")
    add_camera_arguments(parser)
    group = parser.add_argument_group("output")
    group.add_argument("--headless", action="store_true", help="no window (use with --out)")
    group.add_argument("--out", metavar="OUT.mp4", help="write the annotated video here")
    group.add_argument("--out-fps", type=float, help="frame rate written to --out (default: the source's, or 30)")
    group.add_argument("--fourcc", help="codec of --out (default mp4v for .mp4, MJPG for .avi)")
    group.add_argument("--max-frames", type=int, help="stop after this many frames")
    group.add_argument("--fps-window", type=int, default=30, help="frames the overlay FPS averages over (default 30)")
    group.add_argument("--progress-every", type=int, default=100,
                       help="print a progress line every N frames (0: never; default 100)")
    group.add_argument("--memory-log", metavar="CSV", help="write RSS every --memory-every frames to this CSV")
    group.add_argument("--memory-every", type=int, default=100, help="frames between memory-log rows (default 100)")
    return parser


def main(argv=None, opener=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_frames is not None and args.max_frames < 1:
        parser.error("--max-frames must be >= 1")
    if args.memory_every < 1 or args.fps_window < 1 or args.progress_every < 0:
        parser.error("--memory-every and --fps-window must be >= 1, --progress-every >= 0")
    try:
        return run_demo(args, opener=opener)
    except (UsageError, MissingDependencyError, ManifestError) as exc:
        sys.stderr.write("jetson.camera_demo: error: {}\n".format(exc))
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
