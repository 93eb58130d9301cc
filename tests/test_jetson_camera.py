"""jetson.camera (sources, GStreamer pipelines, reconnection) and jetson.camera_demo (headless runs on the real
video, exit codes, Ctrl-C, memory log)."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from jetson import camera_demo
from jetson.camera import (
    Camera, CameraLostError, CameraOptions, SourceOpenError, cv2_video_backends, csi_pipeline, parse_source,
    rtsp_pipeline,
)
from tests.test_jetson_fixtures import VIDEO_FRAMES, jetson_bundle, require_video

REPO = Path(__file__).resolve().parent.parent


def count_frames(path: Path):
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    frames, size = 0, None
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames += 1
        size = frame.shape
    capture.release()
    return frames, size


# --------------------------------------------------------------------------------------------------- sources

@pytest.mark.parametrize("text, kind, location", [
    ("csi://0", "csi", 0), ("csi://1", "csi", 1), ("/dev/video2", "usb", 2), ("0", "usb", 0),
    ("rtsp://10.0.0.2:554/stream", "rtsp", "rtsp://10.0.0.2:554/stream"), ("https://x/y.m3u8", "url", "https://x/y.m3u8"),
    ("clip.mp4", "file", "clip.mp4"), ("/data/video 1.avi", "file", "/data/video 1.avi"),
])
def test_parse_source(text, kind, location):
    spec = parse_source(text)
    assert (spec.kind, spec.location, spec.text) == (kind, location, text)


@pytest.mark.parametrize("bad", ["", "csi://", "csi://front"])
def test_parse_source_refuses(bad):
    with pytest.raises(ValueError, match="source"):
        parse_source(bad)


def test_csi_pipeline_is_the_argus_to_bgr_appsink_chain():
    pipeline = csi_pipeline(1, 1920, 1080, 30, flip=2, out_width=960, out_height=540)
    elements = [part.strip().split(" ")[0].split(",")[0] for part in pipeline.split("!")]
    assert elements == ["nvarguscamerasrc", "video/x-raw(memory:NVMM)", "nvvidconv", "video/x-raw", "videoconvert",
                        "video/x-raw", "appsink"]
    assert "sensor-id=1" in pipeline and "width=(int)1920, height=(int)1080" in pipeline
    assert "framerate=(fraction)30/1" in pipeline and "flip-method=2" in pipeline
    assert "width=(int)960, height=(int)540, format=(string)BGRx" in pipeline
    assert "format=(string)BGR !" in pipeline and pipeline.endswith("appsink drop=1 max-buffers=1")


def test_rtsp_pipelines():
    jetson = rtsp_pipeline("rtsp://cam/1", 100, "h265", jetson=True)
    assert jetson.startswith("rtspsrc location=rtsp://cam/1 latency=100 ! rtph265depay ! h265parse ! nvv4l2decoder")
    desktop = rtsp_pipeline("rtsp://cam/1", jetson=False)
    assert "decodebin" in desktop and "nvv4l2decoder" not in desktop and desktop.endswith("sync=false")


def test_video_backends_parsed_from_build_information():
    info = ("General configuration\n  Video I/O:\n    DC1394:                      NO\n"
            "    FFMPEG:                      YES\n      avcodec:                   YES (58.54.100)\n"
            "    GStreamer:                   YES (1.14.5)\n    v4l/v4l2:                    YES (linux/videodev2.h)\n"
            "\n  Parallel framework:            pthreads\n")
    backends = cv2_video_backends(info)
    assert backends["GStreamer"] and backends["FFMPEG"] and not backends["DC1394"]
    assert "Parallel framework" not in backends and "avcodec" not in backends
    # OpenCV 3.x layout: an empty value followed by the GStreamer components.
    old_layout = ("  Video I/O:\n    FFMPEG:                      NO\n    GStreamer:                   \n"
                  "      base:                      YES (1.14.5)\n      video:                     YES (1.14.5)\n"
                  "    V4L/V4L2:                    Using libv4l (ver 1.14.2)\n\n  Other:\n")
    backends = cv2_video_backends(old_layout)
    assert backends == {"FFMPEG": False, "GStreamer": True, "V4L/V4L2": False}
    assert cv2_video_backends(old_layout.replace("YES (1.14.5)", "NO"))["GStreamer"] is False
    assert cv2_video_backends(cv2.getBuildInformation())["FFMPEG"]  # this machine's pip OpenCV


def test_csi_without_gstreamer_names_the_problem():
    if cv2_video_backends(cv2.getBuildInformation()).get("GStreamer"):
        pytest.skip("this cv2 has GStreamer")
    with pytest.raises(SourceOpenError, match="csi://0: CSI cameras need OpenCV built with GStreamer"):
        Camera(parse_source("csi://0")).open()


class FakeCapture:
    """A camera that delivers ``good`` frames, then nothing (unplugged)."""

    def __init__(self, good, opened=True):
        self.good = good
        self.opened = opened
        self.released = False

    def isOpened(self):
        return self.opened

    def read(self):
        if self.good > 0:
            self.good -= 1
            return True, np.zeros((8, 8, 3), np.uint8)
        return False, None

    def release(self):
        self.released = True


def scripted_opener(plan):
    """opener returning FakeCapture(n) for each n in plan (None: the camera is not there)."""
    opened = []

    def opener(spec, options):
        n = plan.pop(0) if plan else None
        capture = FakeCapture(n or 0, opened=n is not None)
        opened.append(capture)
        return capture, "fake"
    return opener, opened


def test_live_camera_reconnects_with_backoff():
    opener, opened = scripted_opener([3, None, 2])
    sleeps, lines = [], []
    camera = Camera(parse_source("/dev/video0"), CameraOptions(retries=3, retry_delay=0.5), opener=opener,
                    sleep=sleeps.append, log=lines.append)
    with camera:
        frames = [camera.read() for _ in range(5)]
    assert all(f is not None for f in frames)
    assert sleeps == [0.5, 1.0] and camera.reconnects == 1 and camera.frames_read == 5
    assert all(c.released for c in opened)
    assert "reconnected" in lines[-1]


def test_live_camera_lost_after_retries():
    opener, opened = scripted_opener([2])
    sleeps = []
    camera = Camera(parse_source("rtsp://cam/1"), CameraOptions(retries=4, retry_delay=1.0, max_retry_delay=3.0),
                    opener=opener, sleep=sleeps.append, log=lambda _: None)
    camera.open()
    camera.read(), camera.read()
    with pytest.raises(CameraLostError, match=r"rtsp://cam/1 stopped delivering frames .* 4 reconnection attempts "
                                              r"over 9.0 s"):
        camera.read()
    assert sleeps == [1.0, 2.0, 3.0, 3.0]
    assert all(c.released for c in opened)


def test_file_ends_or_loops():
    video = require_video()
    with Camera(parse_source(str(video))) as camera:
        assert camera.frame_count == VIDEO_FRAMES and abs(camera.fps - 14.0) < 1e-6
        count = 0
        while camera.read() is not None:
            count += 1
        assert count == VIDEO_FRAMES and camera.read() is None
    looped = Camera(parse_source(str(video)), CameraOptions(loop=True))
    with looped:
        for _ in range(VIDEO_FRAMES + 5):
            assert looped.read() is not None
    assert looped.loops == 1 and looped.frames_read == VIDEO_FRAMES + 5


def test_unopenable_files(tmp_path):
    with pytest.raises(SourceOpenError, match="missing.mp4: video file not found"):
        Camera(parse_source(str(tmp_path / "missing.mp4"))).open()
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video")
    with pytest.raises(SourceOpenError, match="notes.mp4: cannot"):
        Camera(parse_source(str(fake))).open()


# ------------------------------------------------------------------------------------------------------ demo

def demo_args(*extra):
    return ["--bundle", str(jetson_bundle()), "--backend", "ort", "--threads", "1", "--headless", *extra]


def test_demo_headless_writes_a_readable_video(tmp_path, capsys):
    video = require_video()
    out, log = tmp_path / "out.mp4", tmp_path / "rss.csv"
    rc = camera_demo.main(demo_args("--source", str(video), "--out", str(out), "--max-frames", "20",
                                    "--memory-log", str(log), "--memory-every", "5"))
    printed = capsys.readouterr().out
    assert rc == 0, printed
    frames, shape = count_frames(out)
    assert frames == 20 and shape == (480, 640, 3)
    assert "frames: 20 in" in printed and "(capture+pre+infer+post+draw+write, mean over the run)" in printed
    assert "model: pruned on ONNX Runtime (CPU)" in printed  # pruned is the default variant when present
    assert "peak RSS" in printed and "stopped: --max-frames 20" in printed
    with open(log) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["frame"]) for r in rows] == [0, 5, 10, 15, 20]
    assert all(float(r["rss_mib"]) > 10 for r in rows)


def test_demo_draws_boxes_and_an_overlay_that_says_what_it_measures():
    frame = np.zeros((120, 400, 3), np.uint8)
    from runtime.postprocess import Detections

    dets = Detections(np.array([[300.0, 60.0, 350.0, 110.0]]), np.array([0.87], np.float32), np.array([0]))
    camera_demo.draw_detections(frame, dets, ["person"])
    assert (frame[60:111, 300] == camera_demo.BOX_COLOUR).all()  # the box's left edge
    lines = camera_demo.overlay_lines(23.45, {"preprocess": 1.0, "infer": 12.34, "postprocess": 0.5}, 1,
                                      "pruned on TensorRT FP16", "+write", 0.3, 30)
    assert lines[0] == "pipeline FPS 23.4 (capture+pre+infer+post+draw+write, last 30 frames)"
    assert lines[1].startswith("infer 12.3 ms") and lines[2] == "1 detection (score > 0.30)"
    camera_demo.draw_overlay(frame, lines)
    # text was drawn: anti-aliased white strokes (OpenCV 4.1-4.5 peak at 249, 5.x at 255; ~300 pixels > 200)
    assert (frame[:20, :100] > 200).sum() > 150


@pytest.mark.parametrize("width, height", [(640, 480), (1280, 720), (300, 500)])
def test_boxes_from_letterboxed_outputs_are_drawn_where_they_are_in_the_frame(width, height):
    """Known boxes in frame pixels -> network-input pixels (the letterbox) -> raw outputs -> post-processing ->
    drawing: the rectangles land on the original frame coordinates; decoys below the score threshold and a
    lower-scoring duplicate (IoU > 0.6) are not drawn."""
    from runtime.postprocess import PostprocessConfig, detections_from_outputs
    from runtime.preprocess import letterbox, letterbox_boxes

    frame = np.zeros((height, width, 3), np.uint8)
    _, meta = letterbox(frame, 320, 114)
    truth = np.array([[0.1 * width, 0.2 * height, 0.3 * width, 0.7 * height],
                      [0.6 * width, 0.1 * height, 0.9 * width, 0.5 * height]]).round()
    boxed = letterbox_boxes(truth, meta)
    duplicate = boxed[0] + np.array([1.0, 1.0, 1.0, 1.0])  # IoU with box 0 well above 0.6
    decoy = np.array([5.0, 5.0, 40.0, 40.0])
    boxes = np.vstack([boxed, duplicate, decoy]).astype(np.float32)[None]
    scores = np.array([[0.9], [0.8], [0.7], [0.2]], np.float32)[None]
    config = PostprocessConfig("boxes", "scores", ["person"], score_threshold=0.3, iou_threshold=0.6,
                               max_detections=100, pre_nms_topk=1000)
    detections = detections_from_outputs({"boxes": boxes, "scores": scores}, config, meta)
    assert detections.scores.tolist() == pytest.approx([0.9, 0.8])  # duplicate (0.7) and decoy (0.2) gone
    assert np.abs(detections.boxes - truth).max() < 1e-3  # float32 outputs: sub-pixel round trip
    camera_demo.draw_detections(frame, detections, ["person"])
    green = np.all(frame == camera_demo.BOX_COLOUR, axis=2)
    for x1, y1, x2, y2 in truth.astype(int):
        assert green[y1 + 5:y2 - 5, x1].all() and green[y1 + 5:y2 - 5, x2].all()  # left and right edges
        assert green[y2, x1 + 5:x2 - 5].all()  # bottom edge (the label sits on the top edge)
        assert not green[(y1 + y2) // 2, x1 + 4:x2 - 3].any()  # inside: nothing drawn
    assert green.sum() < 0.1 * width * height  # only the two rectangles and their labels


def test_demo_unopenable_file_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "no-such-clip.mp4"
    assert camera_demo.main(demo_args("--source", str(missing))) == 2
    assert f"{missing}: video file not found" in capsys.readouterr().err
    assert not (tmp_path / "out.mp4").exists()


def test_demo_bad_bundle_and_variant_exit_2(tmp_path, capsys):
    assert camera_demo.main(["--bundle", str(tmp_path), "--source", "x.mp4", "--headless"]) == 2
    assert "manifest not found" in capsys.readouterr().err
    assert camera_demo.main(demo_args("--source", "x.mp4", "--variant", "tiny")) == 2
    assert "variant(s) tiny not in the bundle" in capsys.readouterr().err


def test_demo_camera_lost_exits_3(tmp_path, capsys):
    opener, _ = scripted_opener([4])
    out = tmp_path / "lost.mp4"
    rc = camera_demo.main(demo_args("--source", "/dev/video0", "--retries", "2", "--retry-delay", "0.01",
                                    "--out", str(out)), opener=lambda s, o: _bigger(opener(s, o)))
    printed = capsys.readouterr().out
    assert rc == 3, printed
    assert "/dev/video0 stopped delivering frames" in printed and "stopped: camera lost" in printed
    assert count_frames(out)[0] == 4  # what was captured before the loss is a complete video


def _bigger(opened):
    """FakeCapture frames at a camera-like size."""
    capture, description = opened
    original = capture.read

    def read():
        ok, _ = original()
        return (True, np.full((96, 128, 3), 90, np.uint8)) if ok else (False, None)
    capture.read = read
    return capture, description


def test_demo_ctrl_c_stops_cleanly_and_finishes_the_video(tmp_path):
    video = require_video()
    out = tmp_path / "interrupted.mp4"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "jetson.camera_demo", *demo_args("--source", str(video), "--loop", "--out", str(out),
                                                                 "--progress-every", "10")],
        cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    lines = []
    deadline = time.time() + 60
    for line in process.stdout:
        lines.append(line)
        if line.startswith("frame 10:") or time.time() > deadline:
            break
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=60)
    printed = "".join(lines) + rest
    assert process.returncode == 0, printed
    assert "stopped: Ctrl-C" in printed
    reported = int(printed.split("frames: ")[1].split(" ")[0])
    assert reported >= 10 and count_frames(out)[0] == reported
