"""Does the camera demo's memory stay flat over a long run? Runs `jetson.camera_demo` on a looped video file in a
child process with ``--memory-log``, then summarises and plots the child's RSS over the frames.

    python benchmarks/device_camera_memory.py BUNDLE [--video FILE] [--frames 3000] [--every 50] [--backend ort]
                                              [--variant pruned] [--threads 1] [--out-video /tmp/loop.mp4]
                                              [--json OUT] [--png OUT] [--note TEXT]

"Flat" is judged after a warm-up (``--settle`` frames: allocator pools, ONNX Runtime arenas and the video writer
reach their steady size): the least-squares slope of RSS against frames must be below ``--max-slope`` MiB per 1000
frames, and the growth from the first settled sample to the last below ``--max-growth`` MiB. The JSON says which,
with every sample; the PNG shows RSS and pipeline FPS against frames.

Host/device: Python 3.6 syntax; matplotlib (for the PNG only) is imported lazily and optional.
"""

import argparse
import collections
import csv
import datetime
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from runtime.environment import environment  # noqa: E402
from runtime.fileio import atomic_write_json  # noqa: E402

DEFAULT_VIDEO = os.path.join(os.path.dirname(REPO), "shared", "data", "video", "eth-sunnyday.mp4")
RESULTS = os.path.join(REPO, "benchmarks", "results")


def read_memory_log(path):
    """The demo's --memory-log CSV -> list of (frame, elapsed_s, rss_mib, peak_rss_mib, fps or None)."""
    rows = []
    with open(path) as handle:
        for row in csv.DictReader(handle):
            rows.append((int(row["frame"]), float(row["elapsed_s"]), float(row["rss_mib"]),
                         float(row["peak_rss_mib"]), float(row["pipeline_fps"]) if row["pipeline_fps"] else None))
    if not rows:
        raise ValueError("{}: no rows (did the demo run?)".format(path))
    return rows


def judge(rows, settle, max_slope, max_growth):
    """Flatness figures over the samples at frame >= settle (JSON-ready)."""
    settled = [r for r in rows if r[0] >= settle]
    if len(settled) < 3:
        raise ValueError("only {} samples after frame {}: run more frames or sample more often".format(
            len(settled), settle))
    frames = np.array([r[0] for r in settled], dtype=np.float64)
    rss = np.array([r[2] for r in settled], dtype=np.float64)
    slope_per_frame = float(np.polyfit(frames, rss, 1)[0])
    result = collections.OrderedDict([
        ("settle_frames", settle),
        ("samples_after_settle", len(settled)),
        ("rss_first_settled_mib", float(rss[0])),
        ("rss_last_mib", float(rss[-1])),
        ("rss_min_settled_mib", float(rss.min())),
        ("rss_max_settled_mib", float(rss.max())),
        ("growth_mib", float(rss[-1] - rss[0])),
        ("slope_mib_per_1000_frames", slope_per_frame * 1000.0),
        ("max_slope_mib_per_1000_frames", max_slope),
        ("max_growth_mib", max_growth),
    ])
    result["flat"] = bool(abs(result["slope_mib_per_1000_frames"]) <= max_slope
                          and result["growth_mib"] <= max_growth)
    return result


def plot(rows, verdict, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    frames = [r[0] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(frames, [r[2] for r in rows], label="RSS (MiB)", color="tab:blue")
    ax.plot(frames, [r[3] for r in rows], label="peak RSS (MiB)", color="tab:blue", linestyle=":")
    ax.axvline(verdict["settle_frames"], color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("frame")
    ax.set_ylabel("MiB")
    low = min(r[2] for r in rows)
    ax.set_ylim(0, max(r[3] for r in rows) * 1.15 if low > 0 else None)
    fps_ax = ax.twinx()
    fps = [(r[0], r[4]) for r in rows if r[4] is not None]
    if fps:
        fps_ax.plot([f for f, _ in fps], [v for _, v in fps], color="tab:orange", alpha=0.6, label="pipeline FPS")
        fps_ax.set_ylabel("pipeline FPS (capture+pre+infer+post+draw+write)")
        fps_ax.set_ylim(0, max(v for _, v in fps) * 1.3)
    ax.set_title("{}\nslope {:+.2f} MiB / 1000 frames after frame {} -> {}".format(
        title, verdict["slope_mib_per_1000_frames"], verdict["settle_frames"],
        "flat" if verdict["flat"] else "NOT flat"), fontsize=9)
    lines = ax.get_legend_handles_labels()
    more = fps_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp-{}.png".format(os.getpid())
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--video", default=DEFAULT_VIDEO)
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--every", type=int, default=50, help="frames between RSS samples (default 50)")
    parser.add_argument("--settle", type=int, default=300, help="warm-up frames excluded from the verdict")
    parser.add_argument("--max-slope", type=float, default=2.0, help="MiB per 1000 frames (default 2)")
    parser.add_argument("--max-growth", type=float, default=8.0, help="MiB from settle to end (default 8)")
    parser.add_argument("--backend", default="ort")
    parser.add_argument("--variant", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-video", default=None, help="also write the annotated video (default: a temp file)")
    parser.add_argument("--json", default=os.path.join(RESULTS, "device_camera_memory.json"))
    parser.add_argument("--png", default=os.path.join(RESULTS, "device_camera_memory.png"))
    parser.add_argument("--csv", default=None, help="keep the raw memory log here (default: beside the JSON)")
    parser.add_argument("--note")
    args = parser.parse_args(argv)

    csv_path = args.csv or os.path.splitext(args.json)[0] + ".csv"
    out_video = args.out_video or os.path.join("/tmp", "device_camera_memory-{}.mp4".format(os.getpid()))
    command = [sys.executable, "-m", "jetson.camera_demo", "--bundle", args.bundle, "--source", args.video,
               "--loop", "--max-frames", str(args.frames), "--backend", args.backend, "--threads", str(args.threads),
               "--headless", "--out", out_video, "--memory-log", csv_path, "--memory-every", str(args.every),
               "--progress-every", "500"]
    if args.variant:
        command += ["--variant", args.variant]
    print("running: " + " ".join(command), flush=True)
    started = time.time()
    completed = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               universal_newlines=True)
    sys.stdout.write(completed.stdout)
    if completed.returncode != 0:
        sys.stderr.write("device_camera_memory: the demo failed (exit {})\n".format(completed.returncode))
        return 1
    rows = read_memory_log(csv_path)
    verdict = judge(rows, args.settle, args.max_slope, args.max_growth)
    summary = [line for line in completed.stdout.splitlines()
               if line.startswith(("frames:", "mean ms per frame:", "detections:", "memory:", "source:", "model:"))]
    report = collections.OrderedDict([
        ("format", "jetson-compress-camera-memory"), ("format_version", 1),
        ("created", datetime.datetime.now().replace(microsecond=0).isoformat()),
        ("note", args.note), ("command", command), ("wall_seconds", round(time.time() - started, 1)),
        ("frames", rows[-1][0]), ("verdict", verdict), ("demo_summary", summary),
        ("samples", [collections.OrderedDict(zip(("frame", "elapsed_s", "rss_mib", "peak_rss_mib", "pipeline_fps"), r))
                     for r in rows]),
        ("environment", environment(probe_cuda=False)),
    ])
    atomic_write_json(args.json, report)
    png = plot(rows, verdict, args.png, "camera demo on a looped {} ({} frames)".format(
        os.path.basename(args.video), rows[-1][0]))
    if args.out_video is None and os.path.exists(out_video):
        os.remove(out_video)
    print("RSS after frame {}: {:.1f} -> {:.1f} MiB (max {:.1f}), slope {:+.3f} MiB / 1000 frames -> {}".format(
        args.settle, verdict["rss_first_settled_mib"], verdict["rss_last_mib"], verdict["rss_max_settled_mib"],
        verdict["slope_mib_per_1000_frames"], "flat" if verdict["flat"] else "NOT flat"))
    print("wrote {}{}".format(args.json, " and " + png if png else " (matplotlib missing: no plot)"))
    return 0 if verdict["flat"] else 3


if __name__ == "__main__":
    sys.exit(main())
